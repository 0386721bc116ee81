"""The Celery app. Configuration comes from Django settings (CELERY_* names)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mintweb.settings")

app = Celery("mintweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(lambda: ["workers"])

# Connects the worker_ready / worker_shutdown handlers that keep each worker's Worker row.
# …and imports the model libraries before the pool starts (no lazy-import races in threads).
import workers.heartbeat  # noqa: E402
import workers.startup  # noqa: E402, F401
