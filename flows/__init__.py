"""Prefect flow entrypoints (one module per deployment) and the `renewals` command line."""
