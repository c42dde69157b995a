"""The `rgflow` command line: a thin Typer layer over rgflow_core."""
