"""Software-defined assets, one module per domain (the window graph arrives with issue 4)."""
