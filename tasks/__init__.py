"""Thin Prefect tasks: each calls ``cxrmodel`` and ``db`` to do one step of the pipeline."""
