"""Prefect flows: one per pipeline stage, and the pipeline that runs them in order."""
