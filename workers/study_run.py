"""The worker side of a footprint study: one job trains and grades one cell.

A cell's runs (person x seed) share every setting but the seed, so they train together in
multi-adapter passes over the base (workers/engine/multi_training.py), at most
`settings.MINT_STUDY_ADAPTERS_PER_PASS` adapters a pass. After each pass its adapters
and the bare base are graded on each person's items (a generated person's held-out items
and the general set; a fleet adapter's evaluation set) in one batched generation, and
the pass's runs are recorded in one transaction. A cancelled or failed cell therefore
keeps every finished pass; the job that resumes it skips them. Study adapters are
measurements, not people's revisions: nothing goes to the store.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction

from adapters_app.lifecycle.datasets import load_eval_items, load_examples
from adapters_app.lifecycle.gates import DEFAULT_GATE
from adapters_app.lifecycle.reliability import judge_run
from adapters_app.lifecycle.studies import cell_config
from adapters_app.models import Dataset, Job, Person, Study, StudyCell, StudyRun
from workers.runs import JobRun, ProgressReporter, _thin


class CohortDataGone(Exception):
    """A fleet member's pinned dataset is no longer there (its person was erased)."""


@dataclass(frozen=True)
class CohortMember:
    """One person of a study's cohort: what their adapters train on and are graded on."""

    handle: str  # "alice" for a generated person, "alice/assistant" for a fleet adapter
    examples: list
    items: list
    gate: dict = field(default_factory=lambda: dict(DEFAULT_GATE))  # what a run must pass


def cohort_members(
    study: Study, wanted: Callable[[str], bool] = lambda handle: True, *, base_folder: str | None = None
) -> list[CohortMember]:
    """The cohort's members that `wanted` names (by handle), with their data: generated
    people are made again from the world seed (same seed, same people); fleet members'
    datasets are read by the id and sha256 the study pinned, hash-verified, and only for
    the members wanted (a resumed cell reads no data of the people it has finished).
    Generated people are graded for retention on what the cell's base can be asked
    (`report.retention_items`: the general-knowledge set on an imported base)."""
    from workers.engine.examples import parse_jsonl
    from workers.engine.persona_world import generate_world, jsonl
    from workers.engine.report import retention_items

    if "adapters" not in study.cohort:
        world = generate_world(study.cohort["world_seed"], people=study.people)
        general = retention_items(base_folder, world) if base_folder else world.general_items()
        return [
            CohortMember(
                p.handle, parse_jsonl(jsonl(p.training_rows())).examples, p.eval_items(world) + general
            )
            for p in world.people
            if wanted(p.handle)
        ]
    members = []
    for member in study.cohort["adapters"]:
        if not wanted(member["handle"]):
            continue
        try:
            train, evaluation = (_pinned(member, part) for part in ("train", "eval"))
            examples, items = load_examples(train), load_eval_items(evaluation)
        except Exception:
            # Erasure takes a member out of the cohort as it deletes their data; one erased
            # after `study` was read is skipped. Data gone from a member still listed is an error.
            if member["handle"] not in Study.objects.get(pk=study.pk).fleet_handles:
                continue
            raise
        # Studies made before gates were pinned judge with the default one.
        gate = member.get("gate", DEFAULT_GATE)
        members.append(CohortMember(member["handle"], examples, items, gate))
    return members


def _pinned(member: dict, part: str) -> Dataset:
    pin = member[part]
    found = Dataset.objects.filter(pk=pin["id"], sha256=pin["sha256"]).first()
    if found is None:
        raise CohortDataGone(
            f"{member['handle']}: the {part} set the study pinned ({pin['name']}, {pin['sha256'][:12]}) "
            "is gone; its person was erased or the dataset deleted"
        )
    return found


def still_pinned(study: Study, handles: set[str]) -> set[str]:
    """Those of `handles` whose pinned data is still there, checked under a lock on their
    people's rows (inside the caller's transaction). Erasure takes the same lock first, so a
    pass that read a person's data before their erasure cannot record runs of it after:
    either this sees the data gone, or the erasure waits and then deletes these runs too.
    Generated people are never erased: all of them stay."""
    pins = {member["handle"]: member for member in study.cohort.get("adapters", [])}
    if not pins:
        return set(handles)
    wanted = [pins[handle] for handle in handles if handle in pins]
    owners = {member["handle"].split("/", 1)[0] for member in wanted}
    list(Person.objects.select_for_update().filter(handle__in=owners).values_list("pk", flat=True))
    present = set(
        Dataset.objects.filter(
            pk__in=[member[part]["id"] for member in wanted for part in ("train", "eval")]
        ).values_list("pk", "sha256")
    )
    return {
        member["handle"]
        for member in wanted
        if all((member[part]["id"], member[part]["sha256"]) in present for part in ("train", "eval"))
    }


def _keep_pinned(study: Study, items: list, handle_of: Callable) -> tuple[list, list[str]]:
    """`items` (runs, or runs to train) of the members `still_pinned` keeps, and the handles
    of those it drops, sorted."""
    handles = {handle_of(item) for item in items}
    kept = still_pinned(study, handles)
    return [item for item in items if handle_of(item) in kept], sorted(handles - kept)


class StudyCellRun(JobRun):
    def run(self, job: Job) -> None:
        from workers.engine.base_family import replay_examples
        from workers.engine.base_models import load_base
        from workers.engine.batch_grading import grade_many
        from workers.engine.multi_training import AdapterData, train_adapters
        from workers.engine.payload import unpack
        from workers.engine.suites import scores

        cell = StudyCell.objects.select_related("study", "base").get(pk=job.params["cell"])
        study, base_row = cell.study, cell.base
        done = set(StudyRun.objects.filter(cell=cell).values_list("person", "seed"))
        cohort = cohort_members(
            study, lambda handle: any((handle, s) not in done for s in study.seeds), base_folder=base_row.path
        )
        pending = [(p, seed) for p in cohort for seed in study.seeds if (p.handle, seed) not in done]
        job.append_log(
            f"{cell}: {len(done)} of {cell.runs_total} runs recorded already, {len(pending)} to go"
        )
        if not pending:
            self.succeed_or_lose(job, step=cell.runs_total, total_steps=cell.runs_total)
            return

        per_pass = max(1, settings.MINT_STUDY_ADAPTERS_PER_PASS)
        passes = [pending[i : i + per_pass] for i in range(0, len(pending), per_pass)]
        config = cell_config(cell, seed=0)
        replay = replay_examples(base_row.path) if config.replay else []
        report = ProgressReporter(job)
        total = len(passes) * config.steps

        # train_adapters gives the base back unchanged, so every pass shares one load.
        base = load_base(base_row.path, base_row.digest)
        for index, chunk in enumerate(passes):
            offset = index * config.steps
            with transaction.atomic():  # a person erased since the job began leaves the cohort
                chunk, erased = _keep_pinned(study, chunk, lambda run: run[0].handle)
            if erased:
                job.append_log(f"pass {index + 1}/{len(passes)}: skipping {', '.join(erased)}: erased")
                if not chunk:
                    continue
            job.append_log(
                f"pass {index + 1}/{len(passes)}: {len(chunk)} adapters "
                f"({', '.join(f'{p.handle}/s{seed}' for p, seed in chunk)})"
            )
            started = time.monotonic()
            results = train_adapters(
                base.model,
                base.tokenizer,
                [AdapterData(p.examples, seed) for p, seed in chunk],
                config,
                on_step=lambda step, _, loss, offset=offset: report(offset + step, total, loss),
                replay=replay,
            )
            seconds = time.monotonic() - started
            shas = [hashlib.sha256(r.payload).hexdigest() for r in results]
            payloads = dict(zip(shas, (r.payload for r in results), strict=True))
            people = list({p.handle: p for p, _ in chunk}.values())
            work = [(sha, p.items) for sha, (p, _) in zip(shas, chunk, strict=True)]
            # The bare base answers a person's items the same in every cell of the study: grade
            # it once per person and base, and reuse what an earlier pass recorded.
            bare = dict(
                StudyRun.objects.filter(
                    cell__study=study, cell__base=base_row, person__in=[p.handle for p in people]
                ).values_list("person", "bare_scores")
            )
            unseen = [p for p in people if p.handle not in bare]
            work += [(None, p.items) for p in unseen]
            graded = grade_many(base_row.path, base_row.digest, work, payloads)
            bare.update({p.handle: scores(g) for p, g in zip(unseen, graded[len(chunk) :], strict=True)})
            runs = []
            for (person, seed), result, answers in zip(chunk, results, graded, strict=False):
                own = scores(answers)
                verdict = judge_run(own, bare[person.handle], result.losses, person.gate)
                runs.append(
                    StudyRun(
                        cell=cell,
                        person=person.handle,
                        seed=seed,
                        scores=own,
                        bare_scores=bare[person.handle],
                        passed=verdict.passed,
                        gate_failures=verdict.gate_failures,
                        collapsed=verdict.collapsed,
                        collapse_reasons=verdict.collapse_reasons,
                        first_loss=result.losses[0],
                        final_loss=result.losses[-1],
                        losses=[round(x, 5) for x in _thin(result.losses, 50)],
                        train_seconds=seconds / len(chunk),
                    )
                )
            with transaction.atomic():
                runs, gone = _keep_pinned(study, runs, lambda run: run.person)
                if gone:
                    job.append_log(f"not recording the runs of {', '.join(gone)}: erased during this pass")
                StudyRun.objects.bulk_create(runs)
                if cell.payload_bytes is None:
                    first = results[0]
                    cell.trainable_parameters = first.trainable_parameters
                    cell.stored_parameters = unpack(first.payload).parameters
                    cell.payload_bytes = len(first.payload)
                    StudyCell.objects.filter(pk=cell.pk).update(
                        trainable_parameters=cell.trainable_parameters,
                        stored_parameters=cell.stored_parameters,
                        payload_bytes=cell.payload_bytes,
                    )
            job.append_log(
                f"pass {index + 1}: {sum(r.passed for r in runs)} of {len(runs)} adapters pass the gate, "
                f"{sum(r.collapsed for r in runs)} collapsed ({seconds:.0f}s training)"
            )
        self.succeed_or_lose(
            job,
            step=total,
            total_steps=total,
            loss_points=_thin(report.loss_points),
            result={"runs": StudyCell.objects.values_list("runs_total", flat=True).get(pk=cell.pk)},
        )
