"""The `walq` command line: it parses and prints; walq.ops does the work.

walq.cli.app holds the group and its error handling; importing the command
modules here registers their commands on it.
"""

from walq.cli import admin, control, dead, read, ui, worker
from walq.cli.app import main

__all__ = ["admin", "control", "dead", "main", "read", "ui", "worker"]
