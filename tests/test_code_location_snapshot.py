"""The code location's shape, pinned: a change to the graph fails here until the snapshot is updated on purpose.

Update it with `BABYLON_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest tests/test_code_location_snapshot.py`, then
read the diff of `tests/snapshots/code_location.json` before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dagster import Definitions, TimeWindowPartitionsDefinition, asset

from babylon_assets.definitions import build_definitions
from babylon_assets.settings import Settings

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "code_location.json"

# Placeholder settings, so the snapshot never depends on the environment it is taken in.
PLACEHOLDER_SETTINGS = {"DATABASE_URL": "sqlite:///snapshot.db", "DAGSTER_HOME": "/tmp/snapshot-dagster"}


def _partitions(partitions_def: Any) -> dict[str, Any] | None:
    if partitions_def is None:
        return None
    described: dict[str, Any] = {"type": type(partitions_def).__name__}
    if isinstance(partitions_def, TimeWindowPartitionsDefinition):
        described |= {
            "start": partitions_def.start.isoformat(),
            "fmt": partitions_def.fmt,
            "timezone": partitions_def.timezone,
            "cron_schedule": partitions_def.cron_schedule,
        }
    return described


def _config_schema(resource: Any) -> dict[str, str]:
    """Each config field of a resource with its type (defaults come from Settings, so they are not the shape)."""
    return {name: _type_name(field.annotation) for name, field in sorted(type(resource).model_fields.items())}


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def describe(defs: Definitions) -> dict[str, Any]:
    """The code location as plain data: assets, checks, jobs, sensors and resources' config schema."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "partitions": _partitions(node.partitions_def),
            "backfill_policy": repr(node.backfill_policy) if node.backfill_policy else None,
            "pools": sorted(node.pools or []),
            "tags": dict(sorted(node.tags.items())),
            "kinds": sorted(node.kinds),
            "automation_condition": node.automation_condition is not None,
        }
    checks = {}
    for check_key in sorted(graph.asset_check_keys, key=lambda k: k.to_user_string()):
        spec = graph.get_check_spec(check_key)
        checks[check_key.to_user_string()] = {"asset": spec.asset_key.to_user_string(), "blocking": spec.blocking}
    jobs = {}
    for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name):
        if job.name == "__ASSET_JOB":
            continue
        selected = job.asset_layer.selected_asset_keys if job.asset_layer else set()
        jobs[job.name] = {
            "assets": sorted(k.to_user_string() for k in selected),
            "partitions": _partitions(job.partitions_def),
            "tags": dict(sorted(job.tags.items())),
        }
    sensors = {}
    for sensor in sorted(defs.sensors or [], key=lambda s: s.name):
        sensors[sensor.name] = {
            "jobs": sorted(target.job_name for target in sensor.targets),
            "default_status": sensor.default_status.value,
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
            "required_resources": sorted(sensor.required_resource_keys),
        }
    resources = {
        name: {"class": type(resource).__name__, "config": _config_schema(resource)}
        for name, resource in sorted((defs.resources or {}).items())
    }
    return {"assets": assets, "checks": checks, "jobs": jobs, "sensors": sensors, "resources": resources}


def test_the_code_location_matches_its_snapshot(monkeypatch):
    for name, value in PLACEHOLDER_SETTINGS.items():
        monkeypatch.setenv(name, value)
    described = describe(build_definitions(Settings()))
    text = json.dumps(described, indent=2, sort_keys=True) + "\n"
    if os.environ.get("BABYLON_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.exists(), f"no snapshot yet: run with BABYLON_UPDATE_SNAPSHOT=1 to write {SNAPSHOT}"
    expected = json.loads(SNAPSHOT.read_text())
    for section in ("assets", "checks", "jobs", "sensors", "resources"):
        assert described[section] == expected[section], (
            f"the code location's {section} changed; if on purpose, rerun with BABYLON_UPDATE_SNAPSHOT=1"
        )


def test_a_changed_graph_fails_the_snapshot(monkeypatch):
    for name, value in PLACEHOLDER_SETTINGS.items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(Settings())
    trajectories = defs.resolve_assets_def("trajectories")

    @asset(deps=[trajectories], partitions_def=trajectories.partitions_def)
    def late_rows_report() -> None:
        """A new asset downstream of the windows."""

    changed = Definitions(
        assets=[*defs.assets, late_rows_report],
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        sensors=defs.sensors,
        resources=defs.resources,
    )
    expected = json.loads(SNAPSHOT.read_text())
    assert describe(defs)["assets"] == expected["assets"]
    assert describe(changed)["assets"] != expected["assets"]
