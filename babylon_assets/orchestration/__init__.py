"""Dagster's instance around the code location: instance files, event-log storage, the pipeline runner, the UI
launcher.
"""
