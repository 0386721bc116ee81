"""What a worker process's AdapterRuntime and batched server hold, handed to its residency writer.

The runtime (`workers/engine`, no Django) calls a `ResidencyReporter` whenever it loads,
uses or evicts a model. The reporter turns that into a change for the process's one
writer of `ResidentAdapter` rows (`workers/residency_report.py:ResidencyWriter`), only
while a Celery worker runs a task, so the engine used in a test process or a management
command reports nothing. It hears of changes on the task's thread (the batched server
queues its generator thread's and reports them from the task threads that wait on it),
and has the writer write them there and then, after whatever was handed over before: a
request returns with its rows written. Uses are written at most once a second per model
(the writer holds back the rest for its next round): inference must not wait on the
database for a counter.
"""

from __future__ import annotations

from adapters_app.models import ResidentAdapter
from workers.engine.runtime import ResidencyEvent
from workers.residency_report import Evicted, Loaded, Used, process_writer, worker_name


def tier_of(device: str) -> str:
    return ResidentAdapter.GPU if device.startswith("cuda") else ResidentAdapter.CPU


class ResidencyReporter:
    """The observer of one holder in a worker process: the one-at-a-time runtime's
    (`AdapterRuntime(observer=…)`, holder `runtime`) or the batched server's bank
    (`serving.observe`, holder `serving`). Its changes name its holder, so an evaluation
    loading a revision never looks to the router like a server holding it."""

    def __init__(self, holder: str):
        if holder not in dict(ResidentAdapter.HOLDERS):
            raise ValueError(f"unknown holder {holder!r}")
        self.holder = holder

    def __call__(self, event: ResidencyEvent) -> None:
        worker = worker_name()
        if worker is None:
            return
        if event.action == "loaded":
            self.loaded(worker, event)
        elif event.action == "used":
            self.used(worker, event.sha256)
        elif event.action == "evicted":
            self.evicted(worker, event.sha256, tier_of(event.device))

    def loaded(self, worker_name: str, event: ResidencyEvent) -> None:
        writer = process_writer(worker_name)
        tier = tier_of(event.device)
        writer.submit(
            Loaded(self.holder, worker_name, event.kind, event.sha256, event.base_digest, tier, event.bytes),
            now=True,
        )
        if event.kind == ResidentAdapter.ADAPTER:
            writer.start()  # its rounds also drop erased revisions' copies

    def used(self, worker_name: str, sha256: str) -> None:
        process_writer(worker_name).submit(Used(self.holder, worker_name, sha256), now=True)

    def evicted(self, worker_name: str, sha256: str, tier: str) -> None:
        process_writer(worker_name).submit(Evicted(self.holder, worker_name, sha256, tier), now=True)
