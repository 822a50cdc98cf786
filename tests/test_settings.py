"""Every setting has a working default and is listed in .env.example."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from babylon_assets.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_env_example():
    listed = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert set(Settings.model_fields) - listed == set()


def test_defaults_work_on_the_embedded_store(monkeypatch):
    monkeypatch.delenv("DATABASE_URL")
    settings = Settings()
    assert settings.DATABASE_URL.startswith("sqlite:///")
    assert (settings.MIN_AGENTS, settings.MIN_ACTIONS, settings.GRACE_MINUTES) == (5, 5, 15)
    assert settings.JUDGE_MODEL is None and settings.WANDB_MODE == "offline"
    assert settings.dagster_home.is_absolute()


def test_bad_values_are_refused_with_the_setting_named(monkeypatch):
    monkeypatch.setenv("PARTITION_START", "last tuesday")
    with pytest.raises(ValidationError, match="PARTITION_START"):
        Settings()
    monkeypatch.setenv("PARTITION_START", "2025-01-01T00:00")
    monkeypatch.setenv("MAX_DROPOUT", "1.5")
    with pytest.raises(ValidationError, match="MAX_DROPOUT"):
        Settings()
