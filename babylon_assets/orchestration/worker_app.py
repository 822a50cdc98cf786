"""The Celery app a worker process runs (`celery -A babylon_assets.orchestration.worker_app`, which `babylon worker`
starts): built from the settings of the worker's environment."""

from __future__ import annotations

from babylon_assets.orchestration.workers import make_worker_app
from babylon_assets.settings import Settings

_settings = Settings()
if not _settings.CELERY_BROKER_URL or not _settings.CELERY_BACKEND_URL:
    raise RuntimeError("a worker needs CELERY_BROKER_URL (RabbitMQ) and CELERY_BACKEND_URL (Redis)")

app = make_worker_app(
    _settings.CELERY_BROKER_URL,
    _settings.CELERY_BACKEND_URL,
    _settings.CELERY_QUEUE_PREFIX,
    _settings.CELERY_HEARTBEAT_SECONDS,
)
