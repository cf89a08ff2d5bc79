"""Deployment definitions: schedules, work pools and concurrency of the pipeline's flows."""
