"""Resources: one module per outside thing, chosen by environment in `definitions.py`."""
