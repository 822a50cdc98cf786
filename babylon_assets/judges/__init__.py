"""Judges that call outside services (RULER through litellm); the interface and the outcome judge are core.judging."""
