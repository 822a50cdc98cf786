"""The on-policy rules: what a sampled answer is, which versions may train a step, which tokens the grammar forced."""

from __future__ import annotations

import json

import pytest

from babylon_assets.core.on_policy import (
    GroupAccounting,
    PolicyVersions,
    base_version,
    chosen_tokens,
    judge_group,
    sampled_answer,
)

POLICY = PolicyVersions("mmo", base_version("SmolLM2"))


def test_versions_are_named_by_step_and_the_base_is_step_zero() -> None:
    assert POLICY.step_of("base:SmolLM2") == 0
    assert POLICY.step_of("mmo@7") == 7
    assert POLICY.step_of("other@7") is None
    assert POLICY.step_of("base:another") is None
    assert POLICY.step_of(None) is None
    assert POLICY.version_at(0) == "base:SmolLM2" and POLICY.version_at(3) == "mmo@3"


def test_a_group_of_one_current_version_is_trained_on() -> None:
    verdict = judge_group("g", ["mmo@3"] * 6, POLICY, policy_step=3, max_steps_off_policy=1)
    assert verdict.trainable and verdict.staleness == 0 and verdict.version == "mmo@3"


def test_one_step_behind_is_within_the_default_bound_and_two_are_not() -> None:
    assert judge_group("g", ["mmo@2"] * 3, POLICY, 3, 1).staleness == 1
    stale = judge_group("g", ["mmo@1"] * 3, POLICY, 3, 1)
    assert not stale.trainable and stale.reason == "stale_version" and stale.staleness == 2
    assert judge_group("g", ["mmo@1"] * 3, POLICY, 3, 2).trainable


@pytest.mark.parametrize(
    ("versions", "reason"),
    [
        (["mmo@3", "mmo@2"], "mixed_versions"),
        (["mmo@3", None], "unversioned_play"),
        ([], "unversioned_play"),
        (["gpt-4o"] * 2, "another_model"),
        (["mmo@5"] * 2, "stale_version"),  # ahead of the policy: a checkpoint this run does not continue
    ],
)
def test_groups_that_are_not_one_versions_own_play_are_excluded_with_the_reason(versions, reason) -> None:
    verdict = judge_group("g", versions, POLICY, policy_step=3, max_steps_off_policy=1)
    assert not verdict.trainable and verdict.reason == reason


def test_the_accounting_counts_every_verdict() -> None:
    accounting = GroupAccounting()
    for versions in (["mmo@3"], ["mmo@2"], [None], ["mmo@3", "mmo@2"]):
        accounting.add(judge_group("g", versions, POLICY, 3, 1))
    metrics = accounting.as_metrics()
    assert metrics["groups_on_policy"] == 2
    assert metrics["groups_excluded_unversioned_play"] == 1 and metrics["groups_excluded_mixed_versions"] == 1
    assert metrics["groups_staleness_0"] == 1 and metrics["groups_staleness_1"] == 1


def _metadata(pieces: list[str], ids: bool = True, **sampling) -> dict:
    tokens = [{"token": p, "logprob": -0.5, **({"id": i} if ids else {})} for i, p in enumerate(pieces)]
    return {"modelVersion": "mmo@1", "logprobs": tokens, "sampling": sampling}


def test_a_recorded_call_with_token_ids_is_a_sampled_answer() -> None:
    pieces = ['{"', "action", '":', ' "', "HOLD", '"}']
    answer = sampled_answer(_metadata(pieces, temperature=1.5, response_format={}), "".join(pieces), None)
    assert answer is not None
    assert answer.token_ids == tuple(range(6)) and answer.model_version == "mmo@1"
    assert answer.temperature == 1.5 and answer.constrained


def test_no_ids_or_tokens_that_do_not_spell_the_response_are_no_sampled_answer() -> None:
    pieces = ['{"action": "HOLD"}']
    assert sampled_answer(_metadata(pieces, ids=False), pieces[0], None) is None
    assert sampled_answer(_metadata(pieces), '{"action": "CLOSE"}', None) is None
    assert sampled_answer({"logprobs": None}, "x", None) is None


def test_a_markdown_fence_the_engine_sampled_around_the_json_stays_in_the_tokens() -> None:
    # llama.cpp may sample ```json ... ``` around the schema's JSON and return the JSON alone as the content.
    pieces = ["\n", "```", "json", "\n", '{"action": "HOLD", "reasoning": ""}', "\n```"]
    answer = sampled_answer(_metadata(pieces), '{"action": "HOLD", "reasoning": ""}', None)
    assert answer is not None and answer.text.startswith("\n```json")


def test_keys_and_braces_are_forced_and_values_are_chosen() -> None:
    decision = {"action": "OPEN_LONG", "ticker": "BNNA", "amount": 120, "leverage": 3, "reasoning": "up on news"}
    text = json.dumps(decision)
    # Tokenize by hand the way llama.cpp's vocabulary splits it: structure and values apart.
    pieces = ['{"', "action", '":', ' "', "OPEN", "_LONG", '",', ' "', "ticker", '":', ' "', "BN", "NA", '",']
    pieces += [' "', "amount", '":', " ", "120", ",", ' "', "leverage", '":', " ", "3", ",", ' "', "reasoning", '":']
    pieces += [' "', "up", " on", " news", '"}']
    assert "".join(pieces) == text
    chosen = dict(zip(range(len(pieces)), chosen_tokens(pieces), strict=True))
    picked = {pieces[i] for i, c in chosen.items() if c}
    assert {"OPEN", "_LONG", "BN", "NA", "120", "3", "up", " on", " news"} <= picked
    assert not any(chosen[i] for i, p in enumerate(pieces) if p in ("action", "ticker", "amount", "leverage"))
    # Ending a number or the free reasoning is the model's choice of its length: the tokens that end them count.
    assert chosen[pieces.index(",")] and chosen[len(pieces) - 1]
    assert not chosen[0]


def test_a_fence_around_the_json_is_chosen_and_an_empty_end_of_turn_is_forced() -> None:
    pieces = ["```", "json", "\n", "{", '"action": "', "HOLD", '"', "}", "\n", "```", ""]
    mask = chosen_tokens(pieces)
    assert mask[0] and mask[1] and mask[9] and mask[5]
    assert not mask[3] and not mask[10]
