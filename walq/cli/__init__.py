"""The `walq` command line: it parses and prints; walq.ops does the work."""

from walq.cli.app import main

__all__ = ["main"]
