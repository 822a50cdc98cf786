"""Judges that call outside services (the pure interface and the outcome judge live in core.judging)."""
