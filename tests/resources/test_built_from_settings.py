"""Each setting is declared once: resources carry no defaults of their own, every field is a setting, and the
one place that builds them (definitions.build_resources) hands each its setting's value."""

from __future__ import annotations

import pytest
from pydantic_core import PydanticUndefined

from babylon_assets.definitions import RESOURCES, build_resources
from babylon_assets.settings import Settings


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_every_field_is_a_setting_without_a_default_of_its_own(name):
    resource = RESOURCES[name]
    fields = resource.model_fields  # type: ignore[attr-defined]
    assert set(resource.SETTING_FIELDS) == set(fields), "a field that is no setting, or a setting with no field"
    assert set(resource.SETTING_FIELDS.values()) <= set(Settings.model_fields)
    with_defaults = [field for field, info in fields.items() if info.default is not PydanticUndefined]
    assert with_defaults == [], f"{name} declares defaults of its own: {with_defaults}"


def test_the_built_resources_carry_the_settings_values():
    settings = Settings(
        DATABASE_URL="sqlite:///elsewhere.db",
        MIN_AGENTS=7,
        JUDGE_BACKOFF_SECONDS=0.25,
        DROPOUT_SEED="another",
        EVAL_WINDOWS=3,
        LORA_RANK=4,
    )
    resources = build_resources(settings)
    for name, resource in resources.items():
        for field, setting in RESOURCES[name].SETTING_FIELDS.items():
            assert getattr(resource, field) == getattr(settings, setting), (name, field)
    assert resources["rules"].eligibility().min_agents == 7  # type: ignore[attr-defined]


def test_the_judge_config_is_built_from_its_resource():
    settings = Settings(JUDGE_MODEL="openai/judge", JUDGE_RETRIES=5, JUDGE_BACKOFF_SECONDS=0.5, JUDGE_MODE="pinned")
    config = build_resources(settings)["judge"].ruler_config()  # type: ignore[attr-defined]
    assert (config.model, config.retries, config.backoff_s, config.mode) == ("openai/judge", 5, 0.5, "pinned")
    assert config.timeout_s == Settings().JUDGE_TIMEOUT_SECONDS


def judge_of(**values):
    return build_resources(Settings(**values))["judge"].get_judge()  # type: ignore[attr-defined]


def test_ruler_weight_chooses_the_mixed_judge_and_needs_a_judge_model():
    assert judge_of().name == "outcome"
    assert judge_of(JUDGE_MODEL="openai/judge").name == "ruler"
    mixed = judge_of(JUDGE_MODEL="openai/judge", RULER_WEIGHT=0.25)
    assert mixed.name == "outcome+ruler" and mixed.version.endswith("+outcome-v1@0.25")
    assert judge_of(JUDGE_MODEL="openai/judge", RULER_WEIGHT=0).name == "outcome"
    with pytest.raises(ValueError, match="set JUDGE_MODEL"):
        judge_of(RULER_WEIGHT=0.5)
