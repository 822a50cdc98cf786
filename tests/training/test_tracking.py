"""W&B: one model artifact per model, each checkpoint a version of it aliased step-N and latest."""

import pytest

from babylon_assets.training.tracking import artifact_name_and_aliases


def test_a_checkpoint_version_names_its_models_artifact_and_its_step_alias():
    assert artifact_name_and_aliases("babylon-mmo@3") == ("babylon-mmo", "step-3")
    with pytest.raises(ValueError, match="model@3"):
        artifact_name_and_aliases("babylon-mmo")
