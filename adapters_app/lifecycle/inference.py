"""Inference requests: resolved here, generated on a worker through Celery.

A later issue replaces the one-request-per-task path with continuous
heterogeneous batching; callers keep this interface.
"""

from dataclasses import asdict

from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings

from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.lifecycle.revisions import resolve_model
from mintweb.celery import app as celery_app
from workers.engine.runtime import SamplingParams


class InferenceUnavailable(LifecycleError):
    status = 503
    code = "service_unavailable"


class InferenceFailed(LifecycleError):
    status = 500
    code = "server_error"


def complete(model: str, prompt: str, params: SamplingParams, *, n: int = 1) -> dict:
    """Generate `n` completions of an already-rendered `prompt` for `model`."""
    base, revision = resolve_model(model)
    request = {
        "base_path": base.path,
        "base_digest": base.digest,
        "revision_sha256": revision.sha256 if revision else None,
        "prompt": prompt,
        "params": asdict(params),
        "n": n,
    }
    result = celery_app.send_task(
        "workers.tasks.generate", kwargs=request, queue=settings.CELERY_TASK_DEFAULT_QUEUE
    )
    try:
        generations = result.get(timeout=settings.MINT_INFERENCE_TIMEOUT_SECONDS)
    except CeleryTimeout:
        result.revoke()
        raise InferenceUnavailable("no worker answered in time; is a worker running?") from None
    except Exception as exc:  # the worker's exception, re-raised by Celery
        raise InferenceFailed(f"generation failed on the worker: {exc}") from None
    return {
        "base": base,
        "revision": revision,
        "generations": generations,
    }
