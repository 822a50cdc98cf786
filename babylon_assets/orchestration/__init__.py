"""Dagster's instance around the code location: instance files, event-log storage, the pipeline runner, submitted
runs, Celery workers, the learning loop, the UI launcher.
"""
