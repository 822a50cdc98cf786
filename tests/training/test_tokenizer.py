"""SmolLM2's tokenizer as training uses it (base_models.smollm2_tokenizer): the ids llama-server gives the same text,
checked against known ids here and against llama-server itself where it is built."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from babylon_assets.llm import local_server
from babylon_assets.training import base_models
from babylon_assets.training.grpo import Conversation, tokenize_conversation
from tests.training.conftest import PROMPT, SYSTEM, decision

# llama-server's /tokenize of SmolLM2's GGUF (add_special false, parse_special true), recorded.
KNOWN_IDS = {
    "You are a trader.": [2683, 359, 253, 38173, 30],
    "  leading and trailing  ": [216, 2899, 284, 35079, 256],
    "Cash $10,000.": [51, 1317, 1885, 33, 32, 28, 32, 32, 32, 30],
    '{"action": "hold"}<|im_end|>': [39428, 4667, 1799, 476, 2326, 23597, 2],
    "<|im_start|>assistant\n hi<|im_end|>\n<|endoftext|>": [1, 520, 9531, 198, 15876, 2, 198, 0],
    "\r\n\r\nline": [7209, 198, 1311],
}
AWKWARD = [
    "héllo wörld — naïve café ½ ²³ ٣٤ 🚀🚀 👩‍👩‍👧\tx  y\n\n\n z   ",
    "123456789 3.14159 1e-10 0x1F",
    "Don't you'll we've I'm",
    "日本語のテキスト、中文",
    '{"action": "buy", "ticker": "BTC", "size": 1}<|im_end|>',
    *KNOWN_IDS,
]
# Assistant replies whose tokens must be exactly the trained ones (a leading space stays its own pre-token after
# the template's newline; two leading spaces or a leading newline would merge with it, as in llama.cpp).
RESPONSES = [
    '{"action": "buy", "ticker": "BTC", "size": 1}',
    " a leading space, a\ttab,  two spaces\n\nand a blank line  ",
    "Cash $10,000 -> 🚀 naïve 日本",
    "}",
]


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize(("text", "expected"), KNOWN_IDS.items())
def test_the_tokenizer_gives_llama_servers_ids(tiny_tokenizer, text, expected):
    assert ids_of(tiny_tokenizer, text) == expected
    assert list(tiny_tokenizer(text)["input_ids"]) == expected, "the GGUF adds no BOS (add_bos_token false)"


@pytest.mark.parametrize("text", AWKWARD)
def test_decoding_gives_back_the_text(tiny_tokenizer, text):
    assert tiny_tokenizer.decode(ids_of(tiny_tokenizer, text)) == text


def test_the_special_tokens_are_the_ggufs(tiny_tokenizer, tiny_model):
    from babylon_assets.training.gguf_export import smollm2_tokenizer_fields

    fields = {key: value for key, (value, _, _) in smollm2_tokenizer_fields().items()}
    tokenizer = tiny_tokenizer
    assert (
        (tokenizer.eos_token, tokenizer.eos_token_id)
        == ("<|im_end|>", 2)
        == (fields["tokenizer.ggml.tokens"][2], fields["tokenizer.ggml.eos_token_id"])
    )
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert len(tokenizer) == len(fields["tokenizer.ggml.tokens"]) == 49152
    assert tokenizer.chat_template == fields["tokenizer.chat_template"]
    controls = {
        token
        for token, kind in zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"], strict=True)
        if kind == 3
    }
    assert set(tokenizer.all_special_tokens) <= controls and "<|im_start|>" in tokenizer.all_special_tokens
    assert all(ids_of(tokenizer, token) == [tokenizer.convert_tokens_to_ids(token)] for token in controls)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((tiny_model / name).read_text())
        assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2), name
    assert json.loads((tiny_model / "config.json").read_text())["vocab_size"] == 49152


@pytest.mark.parametrize("response", RESPONSES)
def test_exactly_the_assistants_tokens_are_trained(tiny_tokenizer, response):
    sample = tokenize_conversation(tiny_tokenizer, Conversation(decision(response)), advantage=1.0)
    trained = [t for t, m in zip(sample.input_ids, sample.assistant_mask, strict=True) if m]
    assert trained == [*ids_of(tiny_tokenizer, response), tiny_tokenizer.eos_token_id]
    rendered = tiny_tokenizer.apply_chat_template(decision(response), tokenize=False)
    assert sample.input_ids == ids_of(tiny_tokenizer, rendered)


def test_a_cache_from_before_the_fix_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("BABYLON_CACHE_DIR", str(tmp_path))
    gguf = local_server.model_file()
    stale = tmp_path / "models" / f"{gguf.stem}-{gguf.stat().st_size}-tokenizer"
    stale.mkdir(parents=True)
    (stale / "tokenizer_config.json").write_text("{}")
    (stale / "tokenizer.json").write_text("{}")
    folder = base_models.smollm2_tokenizer_folder()
    assert folder != stale and folder.name.endswith(f"-v{base_models.SMOLLM2_CACHE_VERSION}-tokenizer")
    assert base_models.load_tokenizer(folder).eos_token == "<|im_end|>"
    assert base_models.smollm2_tokenizer_folder() == folder


def test_the_converted_smollm2_folder_has_the_same_tokenizer():
    folder = base_models.resolve_base_model("smollm2")
    tokenizer_folder = base_models.smollm2_tokenizer_folder()
    assert folder.name == tokenizer_folder.name.removesuffix("-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).read_bytes() == (tokenizer_folder / name).read_bytes(), name
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2), name
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 49152


@pytest.fixture(scope="module")
def smollm2_server(llama_server: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-server with SmolLM2's own GGUF, the tokenizer's source (skipped off CI when it is not built)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    folder = tmp_path_factory.mktemp("smollm2-server")
    local_server.serve(folder, port=port, context=512, threads=2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        local_server.stop(folder)


def post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - our own 127.0.0.1 server
        return json.loads(response.read())


def served_ids(server: str, text: str) -> list[int]:
    ids: list[int] = post(f"{server}/tokenize", {"content": text, "add_special": False, "parse_special": True})[
        "tokens"
    ]
    return ids


def test_training_and_serving_tokenize_alike(smollm2_server, tiny_tokenizer):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    rendered = post(f"{smollm2_server}/apply-template", {"messages": messages})["prompt"]
    assert rendered == tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    conversation = tiny_tokenizer.apply_chat_template(decision(RESPONSES[0]), tokenize=False)
    for text in (rendered, conversation, *AWKWARD, *RESPONSES):
        assert ids_of(tiny_tokenizer, text) == served_ids(smollm2_server, text), text
    for text, expected in KNOWN_IDS.items():
        assert served_ids(smollm2_server, text) == expected, "the recorded ids are llama-server's"


def test_the_tokenizer_folder_is_what_the_tiny_model_ships(tiny_model: Path):
    tokenizer_folder = base_models.smollm2_tokenizer_folder()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tiny_model / name).read_bytes() == (tokenizer_folder / name).read_bytes(), name
