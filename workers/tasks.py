"""Celery tasks: three lines each; the work is in workers.runs and the engine."""

from celery import shared_task

from workers import runs, study_run


@shared_task(bind=True, name="workers.tasks.train")
def train(self, job_id: int) -> None:
    runs.TrainRun(job_id, worker=self.request.hostname).execute()


@shared_task(bind=True, name="workers.tasks.evaluate")
def evaluate(self, job_id: int) -> None:
    runs.EvaluateRun(job_id, worker=self.request.hostname).execute()


@shared_task(bind=True, name="workers.tasks.infer")
def infer(self, job_id: int) -> None:
    runs.InferRun(job_id, worker=self.request.hostname).execute()


@shared_task(bind=True, name="workers.tasks.study_cell")
def study_cell(self, job_id: int) -> None:
    study_run.StudyCellRun(job_id, worker=self.request.hostname).execute()


@shared_task(name="workers.tasks.generate", acks_late=False)
def generate(**request) -> list[dict]:
    # Not acks_late: a lost inference request is retried by its client, never replayed later.
    return runs.generate(request)


@shared_task(name="workers.tasks.sweep")
def sweep() -> dict:
    from adapters_app.lifecycle.fleet import sweep_silent_workers
    from adapters_app.lifecycle.jobs import requeue_lost_jobs, sweep_orphan_blobs, sweep_stale_jobs

    return {
        "stale_jobs": sweep_stale_jobs(),
        "requeued_jobs": requeue_lost_jobs(),
        "orphan_blobs": len(sweep_orphan_blobs()),
        "silent_workers": sweep_silent_workers(),
    }


@shared_task(name="workers.tasks.personal_updates")
def personal_updates() -> dict:
    from adapters_app.lifecycle.updates import run_retrain_policies, watch_promotions

    return {"retrains": run_retrain_policies(), "rolled_back": watch_promotions()}


# The console's residency actions (adapters_app/lifecycle/residency.py), sent to one worker's queue.
@shared_task(bind=True, name="workers.tasks.residency_pin", acks_late=False)
def residency_pin(self, sha256: str, base_digest: str, tier: str) -> dict:
    from workers import residency_control

    return residency_control.pin(sha256, base_digest, tier, worker=self.request.hostname)


@shared_task(bind=True, name="workers.tasks.residency_unpin", acks_late=False)
def residency_unpin(self, sha256: str, base_digest: str) -> dict:
    from workers import residency_control

    return residency_control.unpin(sha256, base_digest, worker=self.request.hostname)


@shared_task(bind=True, name="workers.tasks.residency_prefetch", acks_late=False)
def residency_prefetch(self, sha256: str, base_digest: str, tier: str) -> dict:
    from workers import residency_control

    return residency_control.prefetch(sha256, base_digest, tier, worker=self.request.hostname)
