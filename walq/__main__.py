"""`python -m walq` runs the CLI."""

from walq.cli import main

main()
