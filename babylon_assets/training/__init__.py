"""The training run, the torch backend with its GRPO step, GGUF export, tracking, dataset export; imports nothing
here, so `bench/train_step.py` needs torch, transformers and peft only.
"""
