"""Dagster resources, one module per outside thing, built from Settings in `definitions.py`; thin adapters over db/,
judges/, training/, promotion/.
"""
