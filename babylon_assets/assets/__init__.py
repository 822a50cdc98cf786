"""Software-defined assets, one module per domain of the graph: thin shells over core/ and resources/ (may import
both, db/ and the domain packages).
"""
