"""`python -m rgflow_cli` runs the `rgflow` command."""

from rgflow_cli.main import main

main()
