"""Llama models and their LoRA adapters as GGUF files, so llama.cpp's `llama-server` serves what we train.

Two exports, both small and offline:

- `export_model_gguf`: a Llama-architecture Hugging Face folder (float weights) to a float32 GGUF, with the
  tokenizer and chat template copied from SmolLM2's GGUF (our models share its vocabulary, DESIGN 6);
- `export_adapter_gguf`: a peft LoRA adapter (what `TorchBackend` checkpoints) to a llama.cpp LoRA GGUF,
  served on top of the base with `llama-server --lora`.

The tensor names and the Q/K row order follow llama.cpp's own converters (convert_hf_to_gguf.py's
LlamaModel, convert_lora_to_gguf.py) and the shape checks of src/llama-adapter.cpp.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import mmap
import os
import re
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gguf
    import numpy as np

ARCH = "llama"
MODEL_FILE = "model.gguf"
# HF module name -> llama.cpp tensor name, inside one decoder layer.
LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
TOP_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
LORA_NAME = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"
    r"\.lora_([AB])\.weight$"
)


class GgufExportError(ValueError):
    """A model or adapter this exporter cannot turn into a GGUF llama.cpp would serve faithfully."""


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half RoPE pairs row i with i + d/2 inside each head; llama.cpp's pairs adjacent rows."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _head_counts(config: dict[str, Any]) -> tuple[int, int]:
    n_head = int(config["num_attention_heads"])
    return n_head, int(config.get("num_key_value_heads") or n_head)


def _check_llama(config: dict[str, Any], where: Path | str) -> None:
    if config.get("model_type") != ARCH:
        raise GgufExportError(
            f"{where} is a {config.get('model_type')!r} model; only Llama-architecture models "
            "(model_type 'llama', e.g. SmolLM2 and the tiny test model) export to GGUF here"
        )


def _rope_theta(config: dict[str, Any], where: Path) -> float:
    # transformers 5 keeps RoPE settings under rope_parameters; 4.x had rope_theta and rope_scaling at the top.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind != "default":
        raise GgufExportError(f"{where} uses {kind!r} RoPE scaling; only plain RoPE exports (no rope_scaling)")
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def _atomic_write(out: Path, write: Callable[[Path], None]) -> Path:
    """Write beside the target and rename over it, so a reader never sees a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        write(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def _write_gguf(path: Path, writer: gguf.GGUFWriter) -> None:
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


# GGUF value type -> struct format, for the scalar types (gguf.GGUFValueType's numbering).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_metadata(path: Path) -> dict[str, tuple[Any, int, int | None]]:
    """A GGUF file's key/value metadata as {key: (value, value type, array item type)}; do not mutate it.

    gguf-py's GGUFReader takes seconds on SmolLM2's 150k tokenizer entries; this reads the header alone,
    once per process and file version."""
    stat = path.stat()
    return _read_metadata(path, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _read_metadata(path: Path, size: int, mtime_ns: int) -> dict[str, tuple[Any, int, int | None]]:
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        magic, version, _tensors, count = struct.unpack_from("<4sIQQ", data, 0)
        if magic != b"GGUF" or version < 2:
            raise GgufExportError(f"{path} is not a GGUF v2+ file")
        offset = 24

        def read(kind: int) -> Any:
            nonlocal offset
            if kind == _STRING:
                (size,) = struct.unpack_from("<Q", data, offset)
                offset += 8 + size
                return bytes(data[offset - size : offset]).decode("utf-8")
            fmt = "<" + _SCALARS[kind]
            offset += struct.calcsize(fmt)
            return struct.unpack_from(fmt, data, offset - struct.calcsize(fmt))[0]

        fields: dict[str, tuple[Any, int, int | None]] = {}
        for _ in range(count):
            key = read(_STRING)
            kind = read(4)
            if kind != _ARRAY:
                fields[key] = (read(kind), kind, None)
                continue
            item, length = struct.unpack_from("<IQ", data, offset)
            offset += 12
            fields[key] = ([read(item) for _ in range(length)], kind, item)
        return fields


def smollm2_tokenizer_fields() -> dict[str, tuple[Any, int, int | None]]:
    """Every `tokenizer.*` key of SmolLM2's GGUF (vocabulary, merges, special ids, chat template)."""
    from babylon_assets.llm.local_server import model_file

    return {key: field for key, field in read_metadata(model_file()).items() if key.startswith("tokenizer.")}


def smollm2_hparams() -> dict[str, Any]:
    """The `llama.*` hyperparameters of SmolLM2's GGUF, keyed without the `llama.` prefix."""
    from babylon_assets.llm.local_server import model_file

    return {
        key.removeprefix(f"{ARCH}."): value
        for key, (value, _, _) in read_metadata(model_file()).items()
        if key.startswith(f"{ARCH}.")
    }


def _same_vocabulary(folder: Path, tokens: list[str]) -> bool:
    """Whether the folder's tokenizer.json gives SmolLM2's tokens their SmolLM2 ids."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return False
    data = json.loads(path.read_text())
    ids = dict(data.get("model", {}).get("vocab") or {})
    ids.update({added["content"]: added["id"] for added in data.get("added_tokens", [])})
    return all(ids.get(token) == index for index, token in enumerate(tokens))


def _tokenizer_for(folder: Path, vocab_size: int) -> dict[str, tuple[Any, int, int | None]]:
    """SmolLM2's tokenizer fields, padded to the model's vocabulary size; refused for another vocabulary."""
    from gguf import TokenType

    fields = smollm2_tokenizer_fields()
    tokens = fields["tokenizer.ggml.tokens"][0]
    if vocab_size == len(tokens):
        return fields
    # transformers' GGUF reader adds 5 infill tokens (49152 -> 49157 for SmolLM2); extra rows past SmolLM2's
    # tokenizer are padding llama.cpp never emits from text, as convert_hf_to_gguf pads them.
    if vocab_size < len(tokens) or not _same_vocabulary(folder, tokens):
        raise GgufExportError(
            f"{folder} has a vocabulary of {vocab_size} tokens, not SmolLM2's {len(tokens)} (its tokenizer.json "
            "does not match SmolLM2's either); only models sharing SmolLM2's tokenizer export here "
            "(build them with build_tiny_model or fine-tune SmolLM2)"
        )
    extra = range(len(tokens), vocab_size)
    padded = dict(fields)
    for key, pad in (
        ("tokenizer.ggml.tokens", lambda i: f"[PAD{i}]"),
        ("tokenizer.ggml.token_type", lambda i: int(TokenType.UNUSED)),
        ("tokenizer.ggml.scores", lambda i: -1000.0),
    ):
        if key in fields:
            value, kind, item = fields[key]
            padded[key] = ([*value, *(pad(i) for i in extra)], kind, item)
    return padded


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise GgufExportError(
            f"{folder} has no .safetensors weights; save the model with save_pretrained "
            "(safe_serialization, the default) first"
        )
    return files


def _float32_tensors(file: Path) -> Iterator[tuple[str, np.ndarray]]:
    """A safetensors file's tensors as float32 numpy arrays (read through torch, so bf16 ones read too)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as weights:
        for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
            yield name, weights.get_tensor(name).to(torch.float32).numpy()


def _gguf_name(hf_name: str) -> str | None:
    """llama.cpp's name for an HF Llama tensor; None for what llama.cpp recomputes (RoPE inverse frequencies)."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    match = LAYER_NAME.match(hf_name)
    if match is not None:
        block, module, kind = match.groups()
        if module in LAYER_TENSORS:
            return f"blk.{block}.{LAYER_TENSORS[module]}.{kind}"
    else:
        module, _, kind = hf_name.rpartition(".")
        if module in TOP_TENSORS and kind == "weight":
            return f"{TOP_TENSORS[module]}.weight"
    raise GgufExportError(f"tensor {hf_name!r} has no llama.cpp counterpart in a Llama model; not exported")


def export_model_gguf(hf_folder: Path, out: Path) -> Path:
    """Write a Llama-architecture HF folder as a float32 GGUF with SmolLM2's tokenizer; returns `out`."""
    import gguf

    config = json.loads((hf_folder / "config.json").read_text())
    _check_llama(config, hf_folder)
    n_head, n_head_kv = _head_counts(config)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    vocab_size = int(config["vocab_size"])
    rope_theta = _rope_theta(config, hf_folder)
    tokenizer = _tokenizer_for(hf_folder, vocab_size)
    tied = bool(config.get("tie_word_embeddings", False))

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(path, ARCH)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(hf_folder.name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
        writer.add_embedding_length(hidden)
        writer.add_block_count(int(config["num_hidden_layers"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope_theta)
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        writer.add_vocab_size(vocab_size)
        for key, (value, kind, item) in tokenizer.items():
            writer.add_key_value(
                key, value, gguf.GGUFValueType(kind), sub_type=None if item is None else gguf.GGUFValueType(item)
            )
        for hf_name, tensor in (item for file in _weight_files(hf_folder) for item in _float32_tensors(file)):
            name = _gguf_name(hf_name)
            if name is None or (tied and name == "output.weight"):
                continue
            if ".attn_q." in name:
                tensor = _permute(tensor, n_head)
            elif ".attn_k." in name:
                tensor = _permute(tensor, n_head_kv)
            writer.add_tensor(name, tensor)
        _write_gguf(path, writer)

    return _atomic_write(out, write)


def _base_config(adapter_config: dict[str, Any], adapter_folder: Path) -> dict[str, Any]:
    """The adapter's base model config.json: from its folder, or SmolLM2's hyperparameters for its names."""
    from babylon_assets.training.base_models import SMOLLM2_NAMES

    base = str(adapter_config.get("base_model_name_or_path") or "")
    config_file = Path(base).expanduser() / "config.json"
    if config_file.is_file():
        config: dict[str, Any] = json.loads(config_file.read_text())
        return config
    if base in SMOLLM2_NAMES:
        hparams = smollm2_hparams()
        return {
            "model_type": ARCH,
            "num_attention_heads": hparams["attention.head_count"],
            "num_key_value_heads": hparams["attention.head_count_kv"],
        }
    raise GgufExportError(
        f"{adapter_folder}'s base model {base!r} is not a local folder with config.json; "
        "pass base_config= (the base model's config.json as a dict)"
    )


def _check_adapter(adapter_config: dict[str, Any], folder: Path) -> None:
    problems = []
    if adapter_config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {adapter_config.get('peft_type')!r}, not 'LORA'")
    for key, what in (
        ("use_dora", "DoRA"),
        ("rank_pattern", "a per-module rank_pattern"),
        ("alpha_pattern", "a per-module alpha_pattern"),
        ("modules_to_save", "modules_to_save"),
        ("fan_in_fan_out", "fan_in_fan_out"),
        ("lora_bias", "LoRA biases"),
        ("layer_replication", "layer_replication"),
    ):
        if adapter_config.get(key):
            problems.append(f"it uses {what}")
    if adapter_config.get("bias", "none") != "none":
        problems.append(f"bias={adapter_config['bias']!r} trains biases")
    if problems:
        raise GgufExportError(
            f"{folder} is not a plain LoRA adapter llama.cpp can apply: {'; '.join(problems)}. "
            "Train with plain LoraConfig(r, lora_alpha, target_modules) on attention/MLP "
            "projections (TorchTrainerConfig's defaults)"
        )


def export_adapter_gguf(adapter_folder: Path, out: Path, base_config: dict[str, Any] | None = None) -> Path:
    """Write a peft LoRA adapter folder as a llama.cpp LoRA GGUF (for `llama-server --lora`); returns `out`."""
    import gguf
    import numpy as np

    adapter_config = json.loads((adapter_folder / "adapter_config.json").read_text())
    _check_adapter(adapter_config, adapter_folder)
    config = base_config if base_config is not None else _base_config(adapter_config, adapter_folder)
    _check_llama(config, f"{adapter_folder}'s base model")
    n_head, n_head_kv = _head_counts(config)
    rank = int(adapter_config["r"])
    alpha = float(adapter_config["lora_alpha"])
    # llama.cpp scales by alpha / rank; rsLoRA scales by alpha / sqrt(rank).
    if adapter_config.get("use_rslora"):
        alpha *= math.sqrt(rank)
    weights_file = adapter_folder / "adapter_model.safetensors"
    if not weights_file.is_file():
        raise GgufExportError(f"{adapter_folder} has no adapter_model.safetensors; save it with save_pretrained")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    unsupported = []
    for key, tensor in _float32_tensors(weights_file):
        match = LORA_NAME.match(key)
        if match is None:
            unsupported.append(key)
            continue
        block, module, side = match.groups()
        pairs.setdefault(f"blk.{block}.{LAYER_TENSORS[module]}.weight", {})[side] = tensor
    if unsupported:
        raise GgufExportError(
            f"{adapter_folder} has tensors llama.cpp's LoRA loader cannot use "
            f"({', '.join(sorted(unsupported)[:3])}{', ...' if len(unsupported) > 3 else ''}); "
            "only LoRA on the attention and MLP projections exports"
        )

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(path, ARCH)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(adapter_folder.name)
        for name, pair in sorted(pairs.items()):
            if set(pair) != {"A", "B"}:
                raise GgufExportError(f"{adapter_folder}: {name} has lora_{''.join(pair)} without its partner")
            lora_a, lora_b = pair["A"], pair["B"]  # (rank, in) and (out, rank), the shapes llama.cpp checks
            if lora_a.shape[0] != rank or lora_b.shape[1] != rank:
                raise GgufExportError(f"{adapter_folder}: {name} has rank {lora_a.shape[0]}, not r={rank}")
            if ".attn_q." in name:
                lora_b = _permute(lora_b, n_head)  # the rows of B @ A are the rows of B
            elif ".attn_k." in name:
                lora_b = _permute(lora_b, n_head_kv)
            writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(lora_a))
            writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(lora_b))
        _write_gguf(path, writer)

    return _atomic_write(out, write)


def _fingerprint(folder: Path) -> str:
    """The cache key of an HF folder: its path and the size and mtime of its config and weights."""
    parts = [str(folder)]
    for file in [folder / "config.json", *_weight_files(folder)]:
        stat = file.stat()
        parts.append(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def base_model_gguf(base_model: str) -> Path:
    """The GGUF llama-server loads for BASE_MODEL: SmolLM2's own, or a local HF folder exported once and cached."""
    from babylon_assets.llm.local_server import model_file
    from babylon_assets.training.base_models import SMOLLM2_NAMES, _publish, models_cache, resolve_base_model

    if base_model in SMOLLM2_NAMES:
        return model_file()
    folder = resolve_base_model(base_model)
    # smollm2_folder() records the GGUF it was converted from: serve that one, not a float32 copy.
    source = folder / "babylon_source.json"
    if source.is_file():
        with suppress(ValueError, KeyError, TypeError):
            gguf_file = Path(json.loads(source.read_text())["gguf"])
            if gguf_file.is_file():
                return gguf_file
    target = models_cache() / f"{folder.name}-gguf-{_fingerprint(folder)}"
    if not (target / MODEL_FILE).is_file():
        _publish(
            target,
            lambda partial: export_model_gguf(folder, partial / MODEL_FILE),
            lambda done: (done / MODEL_FILE).is_file(),
        )
    return target / MODEL_FILE
