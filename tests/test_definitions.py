"""The code location loads, and its store resource works inside a Dagster run."""

import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetExecutionContext, Definitions, MaterializeResult, asset, materialize

from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.core.window_time import utcnow
from babylon_assets.db.store import Store
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.resources.store import StoreResource
from babylon_assets.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_the_code_location_loads_with_placeholder_settings():
    from babylon_assets.definitions import build_definitions

    defs = build_definitions()
    Definitions.validate_loadable(defs)
    assert isinstance(defs.resources["store"], StoreResource)


def test_dagster_validates_the_workspace(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "babylon_assets" in result.stdout + result.stderr


def test_the_store_resource_serves_an_asset(tmp_path):
    url = f"sqlite:///{tmp_path / 'resource.db'}"
    seeded = Store(url)
    seeded.upgrade()
    simulate(seeded, SimulationPlan(agents=6, windows=3), now=utcnow())
    seeded.dispose()

    @asset
    def readiness(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
        summaries = store.get_store().window_summaries(EligibilityRules(), lookback_hours=24)
        return MaterializeResult(metadata={"ready_windows": sum(s.is_ready(EligibilityRules()) for s in summaries)})

    result = materialize([readiness], resources={"store": StoreResource.from_settings(Settings(DATABASE_URL=url))})
    assert result.success
    (materialization,) = result.asset_materializations_for_node("readiness")
    assert materialization.metadata["ready_windows"].value == 3
