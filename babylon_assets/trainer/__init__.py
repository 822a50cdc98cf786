"""Training: ART's backend protocol on transformers + peft (the `torch` backend), and the base models it loads."""
