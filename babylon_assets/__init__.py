"""Babylon Assets: a Dagster code location that turns recorded LLM trading play into trained agents."""

__version__ = "0.1.0"
