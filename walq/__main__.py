"""`python -m walq` runs the CLI."""

from walq.cli.app import main

main()
