"""What makes two evaluations the same plays (issue 20, item 7): the plan's key."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from babylon_assets.promotion import evaluation
from babylon_assets.promotion.evaluation import EvaluationPlan

PLAN = EvaluationPlan(
    seeds=(7401, 7402), windows=5, agents=8, duration_minutes=3, start=datetime(2024, 10, 1, tzinfo=UTC)
)


def test_plays_under_another_prompt_or_schema_are_other_plays(monkeypatch):
    unstructured = replace(PLAN, structured=False)
    assert unstructured.key != PLAN.key and unstructured.as_json()["schema"] is None
    before = PLAN.key
    monkeypatch.setattr(evaluation, "PROMPT_VERSION", "prompt-v0")
    assert PLAN.key != before


def test_sampled_play_draws_from_the_whole_distribution_and_says_so():
    sampled = replace(PLAN, temperature=1.0)
    assert sampled.as_json()["sampler"] == "neutral" and sampled.key != PLAN.key
    assert "sampler" not in PLAN.as_json()  # greedy: the committed greedy plays keep their key


def test_seeded_sampled_play_is_other_play_and_greedy_play_has_no_seeds():
    sampled = replace(PLAN, temperature=1.0)
    seeded = replace(sampled, common_random_numbers=True)
    assert seeded.seeded and seeded.as_json()["sampler_seeds"] == "common" and seeded.key != sampled.key
    assert "sampler_seeds" not in sampled.as_json()  # the committed sampled plays keep their key
    greedy = replace(PLAN, common_random_numbers=True)
    assert not greedy.seeded and greedy.key == PLAN.key  # nothing to seed at temperature 0
