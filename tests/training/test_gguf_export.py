"""GGUF export checked against llama.cpp itself: the tiny model and a LoRA adapter on it, served by llama-server,
give torch's next-token log-probabilities for the same chat prompt."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from babylon_assets.llm import local_server
from babylon_assets.training.gguf_export import (
    GgufExportError,
    base_model_gguf,
    export_adapter_gguf,
    export_model_gguf,
    read_metadata,
)
from tests.training.conftest import PROMPT, SYSTEM

MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
TOP = 5
# float32 on both sides, so only summation order differs: measured 2e-5 (base) and 9e-5 (adapter). Q/K rows left
# in HF's rotate-half order (no permutation) measured 3e-3 (base) and 5e-2 (adapter), so 0.05 would miss them.
TOLERANCE = 5e-4


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def adapter_folder(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A peft LoRA adapter on the tiny model as TorchBackend writes one, with random (non-zero) B matrices."""
    import torch
    from peft import LoraConfig, get_peft_model

    from babylon_assets.training.base_models import load_causal_lm
    from babylon_assets.training.torch_backend import DEFAULT_TARGET_MODULES

    torch.manual_seed(1)
    model = get_peft_model(
        load_causal_lm(tiny_model),
        LoraConfig(r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGET_MODULES), task_type="CAUSAL_LM", bias="none"),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def adapter_gguf(adapter_folder: Path) -> Path:
    return export_adapter_gguf(adapter_folder, adapter_folder / "adapter.gguf")


@dataclass(frozen=True)
class Served:
    url: str
    folder: Path


@pytest.fixture(scope="module")
def served(
    llama_server: None, tiny_gguf: Path, adapter_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """llama-server with the exported tiny model and the adapter (skipped off CI when it is not built)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tmp_path_factory.mktemp("tiny-server")
    local_server.serve(folder, port=port, context=512, threads=2, model=tiny_gguf, lora=[adapter_gguf], alias="tiny")
    try:
        yield Served(f"http://127.0.0.1:{port}", folder)
    finally:
        local_server.stop(folder)


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - our own 127.0.0.1 server
        return json.loads(response.read())


def prompt_ids(server: str, tokenizer: Any) -> list[int]:
    """The chat prompt as the server renders it with the GGUF's template, which must be transformers' own."""
    rendered = post(f"{server}/apply-template", {"messages": MESSAGES})["prompt"]
    assert rendered == tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids: list[int] = post(f"{server}/tokenize", {"content": rendered, "add_special": False, "parse_special": True})[
        "tokens"
    ]
    return ids


def served_top(server: str, ids: list[int], lora_scale: float) -> list[tuple[int, float]]:
    """llama-server's greedy next token after `ids` and its top log-probabilities, as (token id, logprob)."""
    body = {
        "prompt": ids,
        "n_predict": 1,
        "temperature": 0.0,
        "n_probs": TOP,
        "cache_prompt": False,
        "lora": [{"id": 0, "scale": lora_scale}],
    }
    (step,) = post(f"{server}/completion", body)["completion_probabilities"]
    top = [(entry["id"], entry["logprob"]) for entry in step["top_logprobs"]]
    assert top[0][0] == step["id"], "temperature 0 picks the most likely token"
    return top


def torch_logprobs(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)


def gap(served: list[tuple[int, float]], expected: Any) -> float:
    """The largest difference between the server's top log-probabilities and torch's for the same tokens."""
    return max(abs(logprob - float(expected[token])) for token, logprob in served)


@pytest.fixture(scope="module")
def base_torch(tiny_model: Path) -> Any:
    from babylon_assets.training.base_models import load_causal_lm

    return load_causal_lm(tiny_model).eval()


def test_the_served_tiny_model_gives_torchs_next_token(served, tiny_model, tiny_gguf, base_torch):
    from babylon_assets.training.base_models import load_tokenizer

    server = served.url
    ids = prompt_ids(server, load_tokenizer(tiny_model))
    expected = torch_logprobs(base_torch, ids)
    served = served_top(server, ids, lora_scale=0.0)
    assert served[0][0] == int(expected.argmax())
    assert gap(served, expected) < TOLERANCE
    metadata = read_metadata(tiny_gguf)
    assert metadata["tokenizer.chat_template"] == read_metadata(local_server.model_file())["tokenizer.chat_template"]
    assert metadata["llama.vocab_size"][0] == len(expected)


def test_a_served_lora_adapter_gives_the_peft_models_next_token(served, tiny_model, adapter_folder, base_torch):
    from peft import PeftModel

    from babylon_assets.training.base_models import load_causal_lm, load_tokenizer

    server = served.url
    ids = prompt_ids(server, load_tokenizer(tiny_model))
    tuned = PeftModel.from_pretrained(load_causal_lm(tiny_model), str(adapter_folder)).merge_and_unload().eval()
    expected, base = torch_logprobs(tuned, ids), torch_logprobs(base_torch, ids)
    assert float((expected - base).abs().max()) > 0.5, "the adapter must change the distribution to test anything"

    served = served_top(server, ids, lora_scale=1.0)
    assert served[0][0] == int(expected.argmax())
    assert gap(served, expected) < TOLERANCE
    assert gap(served, base) > 0.1
    unscaled = served_top(server, ids, lora_scale=0.0)
    assert unscaled[0][0] == int(base.argmax()) and gap(unscaled, base) < TOLERANCE
    (listed,) = json.loads(urllib.request.urlopen(f"{server}/lora-adapters", timeout=10).read())  # noqa: S310
    assert Path(listed["path"]).name == "adapter.gguf"


def test_training_tokenizes_the_chat_prompt_as_the_server_does(served, tiny_model):
    from babylon_assets.training.base_models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    ids = tokenizer.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    assert list(getattr(ids, "input_ids", ids)) == prompt_ids(served.url, tokenizer)


def test_serve_records_what_it_serves_and_refuses_to_swap_it_silently(served, tiny_gguf, adapter_gguf):
    folder = served.folder
    state = local_server.status(folder)
    assert state is not None and state.healthy
    assert (state.model, state.lora, state.alias) == (tiny_gguf.resolve(), (adapter_gguf.resolve(),), "tiny")
    assert local_server.serve(folder, port=state.port, model=tiny_gguf, lora=[adapter_gguf], alias="tiny") == state
    with pytest.raises(local_server.LocalLlmError, match="already runs llama-server"):
        local_server.serve(folder, port=state.port, model=tiny_gguf, alias="tiny")


def test_a_model_with_another_vocabulary_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    for vocab_size in (1000, 60000):  # smaller than SmolLM2's; larger, with no tokenizer saying it is SmolLM2's
        folder = tmp_path / f"vocab-{vocab_size}"
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
        LlamaForCausalLM(config).save_pretrained(folder)
        with pytest.raises(GgufExportError, match=rf"vocabulary of {vocab_size} tokens, not SmolLM2's 49152"):
            export_model_gguf(folder, tmp_path / "out.gguf")
        assert not (tmp_path / "out.gguf").exists()


def edited_adapter(source: Path, target: Path, **changes: Any) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.gguf"))
    config = json.loads((target / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return target


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
    ],
)
def test_an_unsupported_adapter_is_refused(tmp_path, adapter_folder, changes, message):
    folder = edited_adapter(adapter_folder, tmp_path / "adapter", **changes)
    with pytest.raises(GgufExportError, match=message):
        export_adapter_gguf(folder, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_an_adapter_on_another_architecture_or_module_is_refused(tmp_path, adapter_folder):
    with pytest.raises(GgufExportError, match="'gpt2' model"):
        export_adapter_gguf(adapter_folder, tmp_path / "out.gguf", base_config={"model_type": "gpt2"})
    import torch
    from safetensors.torch import load_file, save_file

    folder = edited_adapter(adapter_folder, tmp_path / "embeddings")
    weights = load_file(folder / "adapter_model.safetensors")
    weights["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 64)
    save_file(weights, folder / "adapter_model.safetensors")
    with pytest.raises(GgufExportError, match="base_model.model.lm_head.lora_A.weight"):
        export_adapter_gguf(folder, tmp_path / "out.gguf")


def test_the_adapter_gguf_has_what_llama_cpp_checks(adapter_gguf, adapter_folder):
    import gguf

    metadata = read_metadata(adapter_gguf)
    assert {key: metadata[key][0] for key in ("general.type", "general.architecture", "adapter.type")} == {
        "general.type": "adapter",
        "general.architecture": "llama",
        "adapter.type": "lora",
    }
    assert metadata["adapter.lora.alpha"][0] == 8.0
    tensors = {tensor.name: tuple(int(n) for n in tensor.shape) for tensor in gguf.GGUFReader(adapter_gguf).tensors}
    assert len(tensors) == 2 * 7 * 2  # a and b, 7 projections, 2 layers
    # ggml order (columns first): lora_a is (in, r), lora_b is (r, out)
    assert tensors["blk.0.attn_k.weight.lora_a"] == (64, 4) and tensors["blk.0.attn_k.weight.lora_b"] == (4, 32)
    assert tensors["blk.1.ffn_down.weight.lora_a"] == (128, 4) and tensors["blk.1.ffn_down.weight.lora_b"] == (4, 64)


def test_base_model_gguf_exports_a_local_folder_once(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("BABYLON_CACHE_DIR", str(tmp_path / "cache"))
    assert base_model_gguf("smollm2") == local_server.model_file()
    first = base_model_gguf(str(tiny_model))
    assert first.is_relative_to(tmp_path / "cache") and read_metadata(first)["general.type"][0] == "model"
    written = first.stat().st_mtime_ns
    assert base_model_gguf(str(tiny_model)) == first and first.stat().st_mtime_ns == written
    assert not list(first.parent.parent.glob(".*")), "no partial folder is left behind"
