"""Deploying a checkpoint: serve it and switch the gateway's upstream to it (DESIGN 6: deploying a model is
switching the gateway's upstream).

Locally the checkpoint's adapter is exported to GGUF and the local llama.cpp server is restarted with the
base GGUF and that adapter, under the model version as its name; elsewhere (POLICY_API_BASE) the server
already serves `{MODEL_NAME}@{step}`. Then `trained_models` says `deployed` (the previous one `archived`)
and the serving file names the new upstream, which the gateway re-reads on its next call, so every agent's
next call (the game's and the simulator's) goes to the new model and is recorded with its version.

The server starts before any record changes: a deploy that cannot serve its model changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babylon_assets.db.evaluation_records import EvaluationRecords
from babylon_assets.db.store import Store, StoreError
from babylon_assets.gateway.app import Upstream
from babylon_assets.gateway.serving import write_serving_file


class DeployError(StoreError):
    """A model that cannot or may not be deployed, with why."""


@dataclass(frozen=True)
class DeployOptions:
    """Where a deployed model is served and announced."""

    serving_file: Path
    local_llm_port: int = 8080
    gateway_port: int = 8787
    policy_api_base: str | None = None

    @property
    def llm_folder(self) -> Path:
        """The local server's folder (pid file, log): `.babylon/llm` beside the default serving file, the one
        `babylon llm serve|stop|status` manage."""
        return self.serving_file.parent / "llm"

    @classmethod
    def from_settings(cls, settings: Any) -> DeployOptions:
        """SERVING_FILE, LOCAL_LLM_PORT, GATEWAY_PORT, POLICY_API_BASE."""
        return cls(
            Path(settings.SERVING_FILE), settings.LOCAL_LLM_PORT, settings.GATEWAY_PORT, settings.POLICY_API_BASE
        )


@dataclass(frozen=True)
class Deployment:
    """What a deploy did."""

    model_id: str
    previous: str | None
    upstream: Upstream
    adapter_gguf: str | None
    server_pid: int | None
    serving_file: str

    def agent_settings(self, gateway_port: int) -> dict[str, str]:
        """What the game's own agents set to use the deployed model through the gateway (recorded)."""
        return {"AGENT_MODEL": f"openai/{self.model_id}", "AGENT_API_BASE": f"http://127.0.0.1:{gateway_port}/v1"}


# A model in these states may be deployed: it passed the gate (ready), or it was deployed before (rollback).
DEPLOYABLE = ("ready", "deployed", "archived")


def deploy_model(store: Store, options: DeployOptions, model_id: str, *, force: bool = False) -> Deployment:
    """Serve the model and switch every agent to it; `force` deploys a model the gate has not passed."""
    records = EvaluationRecords(store)
    row = records.model(model_id)
    model_id = str(row.modelId)
    status = str(row.status)
    if status == "archived" and row.deployedAt is None and not force:
        raise DeployError(f"{model_id} is archived and was never deployed: its checkpoint may be pruned")
    if status not in DEPLOYABLE and not force:
        why = ""
        gate = (row.metrics).get("gate") if isinstance(row.evalMetrics, dict) else None
        if gate:
            why = ": " + "; ".join(gate.get("reasons", []))
        raise DeployError(
            f"{model_id} is {status!r}, not ready: the promotion gate has not passed it{why} "
            "(--force deploys it anyway)"
        )
    checkpoint = Path(str(row.storagePath))
    adapter_gguf: str | None = None
    pid: int | None = None
    if options.policy_api_base:
        upstream = Upstream(model=f"openai/{model_id}", api_base=options.policy_api_base, version=model_id)
    else:
        from babylon_assets.llm import local_server
        from babylon_assets.training.gguf_export import base_model_gguf, export_adapter_gguf

        if not (checkpoint / "adapter_config.json").is_file():
            raise DeployError(f"{model_id}'s checkpoint {checkpoint} has no adapter (pruned, or never written)")
        adapter = export_adapter_gguf(checkpoint, checkpoint / "adapter.gguf")
        adapter_gguf = str(adapter)
        base = base_model_gguf(str(row.baseModel))
        local_server.stop(options.llm_folder)
        state = local_server.serve(
            options.llm_folder, port=options.local_llm_port, model=base, lora=[adapter], alias=model_id
        )
        pid = state.pid
        upstream = Upstream(model=f"openai/{model_id}", api_base=state.base_url, version=model_id)
    previous = records.mark_deployed(model_id)
    write_serving_file(options.serving_file, upstream)
    return Deployment(model_id, previous, upstream, adapter_gguf, pid, str(options.serving_file))


def rollback(store: Store, options: DeployOptions) -> Deployment:
    """Deploy again the model that was deployed before the current one."""
    target = EvaluationRecords(store).rollback_target()
    if target is None:
        raise DeployError("nothing to roll back to: no other model was ever deployed")
    return deploy_model(store, options, str(target.modelId))
