"""Footprint studies: launch, cancel, resume, and read their results.

A study is a grid (bases x ranks x target modules x inits) over a cohort and several
seeds. The cohort is either generated people (workers/engine/persona_world.py), or people
of the fleet named by their adapters: each trains on the data behind its live revision
and is graded on its gate's evaluation set, both pinned by sha256 when the study is made.
Creating one writes the study, one cell per grid point and one `study` job per cell in
one transaction; workers run the cells in parallel where there are workers to run them
(workers/study_run.py). Cancelling stops every cell's job; resuming starts a new job for
each unfinished cell, which skips the runs already recorded, so finished work is never
redone. Reliability and the recommendation are computed from the recorded runs by
`lifecycle/reliability.py`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Conflict, Invalid, NotFound
from adapters_app.lifecycle.gates import gate_of
from adapters_app.lifecycle.jobs import cancel_job, launch_job
from adapters_app.lifecycle.reliability import (
    SUITES,
    CellReliability,
    Footprint,
    Recommendation,
    cell_reliability,
    recommend,
)
from adapters_app.lifecycle.roles import authorize
from adapters_app.models import Adapter, BaseModel, Dataset, Job, Study, StudyCell, StudyRun
from workers.engine.report import REPORT_TRAINING
from workers.engine.suites import SUITE_FORMAT
from workers.engine.training import TARGET_PRESETS, TrainingConfig, TrainingConfigInvalid

STUDY_INITS = ("default", "pissa", "olora", "tail")
DEFAULT_GRID = {
    "ranks": [1, 2, 4, 8, 16, 32],
    "targets": ["attention", "all-linear"],
    "inits": list(STUDY_INITS),
    "seeds": 3,
}
DEFAULT_COHORT = {"world_seed": 0, "people": 4}
# Settings a study may set for every cell; rank, targets, init, alpha and seed come from the grid.
SHARED_TRAINING = (
    "steps",
    "learning_rate",
    "batch_size",
    "replay",
    "max_length",
    "dropout",
    "gradient_checkpointing",
)
DEFAULT_TRAINING = {k: v for k, v in REPORT_TRAINING.items() if k in SHARED_TRAINING}
# LoRA's update is scaled by alpha/r; alpha = 2r keeps that scale the same at every rank,
# so a rank comparison is not a learning-rate comparison in disguise.
ALPHA_PER_RANK = 2
MAX_RANK = 64
MAX_PEOPLE = 20
MAX_FLEET_ADAPTERS = 100
MAX_SEEDS = 10
MAX_RUNS = 5000
# What a study request may hold (the API's body, the console form's fields).
REQUEST_FIELDS = (
    "name",
    "bases",
    "ranks",
    "targets",
    "inits",
    "seeds",
    "people",
    "world_seed",
    "adapters",
    "training",
    "training_per_base",
    "reliability_target",
)


# --- validation --------------------------------------------------------------------------


def validate_study(raw: dict) -> dict:
    """An operator's study request -> clean fields for `Study`, or Invalid naming every problem."""
    if not isinstance(raw, dict):
        raise Invalid("a study must be an object")
    errors = {key: "unknown setting" for key in raw if key not in REQUEST_FIELDS}
    name = str(raw.get("name") or "").strip()
    if not name:
        errors["name"] = "required"
    elif len(name) > 100:
        errors["name"] = "at most 100 characters"

    bases = raw.get("bases") or [_default_base_name()]
    if not _list_of(bases, str):
        errors["bases"] = "must be a list of registered base model names"
    else:
        known_bases = set(BaseModel.objects.filter(name__in=bases).values_list("name", flat=True))
        unknown = [b for b in bases if b not in known_bases]
        if unknown:
            errors["bases"] = f"not registered: {', '.join(unknown)}"

    ranks = raw.get("ranks", DEFAULT_GRID["ranks"])
    if not _list_of(ranks, int) or not all(1 <= r <= MAX_RANK for r in ranks):
        errors["ranks"] = f"must be a list of whole numbers from 1 to {MAX_RANK}"
    targets = raw.get("targets", DEFAULT_GRID["targets"])
    if not _list_of(targets, str) or not set(targets) <= set(TARGET_PRESETS):
        errors["targets"] = f"must be a list from {', '.join(TARGET_PRESETS)}"
    inits = raw.get("inits", DEFAULT_GRID["inits"])
    if not _list_of(inits, str) or not set(inits) <= set(STUDY_INITS):
        errors["inits"] = f"must be a list from {', '.join(STUDY_INITS)}"
    seeds = raw.get("seeds", DEFAULT_GRID["seeds"])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds)) if 1 <= seeds <= MAX_SEEDS else None
    if not _list_of(seeds, int) or not 1 <= len(seeds) <= MAX_SEEDS or any(s < 0 for s in seeds):
        errors["seeds"] = f"must be a count from 1 to {MAX_SEEDS}, or a list of that many seeds >= 0"
    fleet = raw.get("adapters") is not None
    cohort = _fleet_cohort(raw, errors) if fleet else _generated_cohort(raw, errors)
    target = raw.get("reliability_target", 0.95)
    if not isinstance(target, int | float) or isinstance(target, bool) or not 0 < target <= 1:
        errors["reliability_target"] = "must be a share in (0, 1], e.g. 0.95"

    training = _checked_training(raw.get("training") or {}, {}, errors, "training")
    per_base = raw.get("training_per_base") or {}
    if not isinstance(per_base, dict):
        errors["training_per_base"] = "must be an object of settings by base name"
        per_base = {}
    elif "bases" not in errors and (strangers := sorted(set(per_base) - set(bases))):
        errors["training_per_base"] = f"names bases the study does not train on: {', '.join(strangers)}"
    elif "training" not in errors:
        per_base = {
            base: _checked_training(settings, training, errors, "training_per_base", label=f"{base}: ")
            for base, settings in per_base.items()
        }

    if not errors:
        people = cohort["people"]
        runs = len(bases) * len(set(ranks)) * len(set(targets)) * len(set(inits)) * len(seeds) * people
        if runs > MAX_RUNS:
            errors["grid"] = f"{runs:,} runs; a study may have at most {MAX_RUNS:,}"
    if errors:
        raise Invalid("invalid study: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), details=errors)
    return {
        "name": name,
        "grid": {
            "bases": list(dict.fromkeys(bases)),
            "ranks": sorted(set(ranks)),
            "targets": [t for t in TARGET_PRESETS if t in targets],
            "inits": [i for i in STUDY_INITS if i in inits],
            "seeds": list(dict.fromkeys(seeds)),
        },
        "cohort": cohort,
        "training": {**DEFAULT_TRAINING, **training},
        "training_per_base": {base: settings for base, settings in per_base.items() if settings},
        "reliability_target": float(target),
    }


def _checked_training(settings, under: dict, errors: dict, key: str, label: str = "") -> dict:
    """Training settings every cell (or every cell of one base) shares, checked as the recipe they
    make on top of `under` and the defaults; a problem is added to errors[key]."""
    problem = None
    if not isinstance(settings, dict):
        problem = "must be an object"
    elif extra := sorted(set(settings) - set(SHARED_TRAINING)):
        problem = (
            f"{', '.join(extra)} cannot be set for a whole study; rank, targets, init and seed come "
            f"from the grid (settable: {', '.join(SHARED_TRAINING)})"
        )
    else:
        try:
            TrainingConfig.from_dict({**DEFAULT_TRAINING, **under, **settings})
        except TrainingConfigInvalid as exc:
            problem = str(exc)
    if problem is None:
        return settings
    errors[key] = "; ".join(filter(None, (errors.get(key), label + problem)))
    return {}


def _generated_cohort(raw: dict, errors: dict) -> dict:
    people = raw.get("people", DEFAULT_COHORT["people"])
    if not isinstance(people, int) or isinstance(people, bool) or not 2 <= people <= MAX_PEOPLE:
        errors["people"] = f"must be a whole number from 2 to {MAX_PEOPLE}"
    world_seed = raw.get("world_seed", DEFAULT_COHORT["world_seed"])
    if not isinstance(world_seed, int) or isinstance(world_seed, bool) or world_seed < 0:
        errors["world_seed"] = "must be a whole number >= 0"
    return {"world_seed": world_seed, "people": people}


def _fleet_cohort(raw: dict, errors: dict) -> dict:
    """People of the fleet, named by adapter handle ("person/adapter"). What each trains on
    and is graded on is pinned now, by id and sha256, so every cell (and a cell resumed
    after a newer revision was promoted) sees the same bytes."""
    for other in ("people", "world_seed"):
        if other in raw:
            errors[other] = "a cohort of fleet adapters has no generated people; leave it out"
    handles = raw["adapters"]
    if not _list_of(handles, str):
        errors["adapters"] = 'must be a list of adapter handles ("person/adapter")'
        return {"adapters": [], "people": 0}
    handles = list(dict.fromkeys(h.strip() for h in handles))
    if not 2 <= len(handles) <= MAX_FLEET_ADAPTERS:
        errors["adapters"] = f"name from 2 to {MAX_FLEET_ADAPTERS} different adapters"
        return {"adapters": [], "people": 0}
    members, problems = [], []
    for handle in handles:
        try:
            members.append(fleet_member(handle))
        except Invalid as exc:
            problems.append(exc.message)
    if problems:
        errors["adapters"] = "; ".join(problems)
    return {"adapters": members, "people": len(handles)}


def fleet_member(handle: str) -> dict:
    """One fleet adapter as a cohort member: the training set behind its live revision
    (its person's newest one if it has none yet: a study may come before the first
    training), its gate's evaluation set (else the newest graded one) and its gate's
    thresholds."""
    person, _, name = handle.partition("/")
    adapter = (
        Adapter.objects.select_related("live_revision__dataset", "eval_dataset")
        .filter(person__handle=person, name=name)
        .first()
    )
    if adapter is None:
        raise Invalid(f"{handle}: no such adapter")
    live = adapter.live_revision
    train = live.dataset if live is not None else None
    if train is None:
        train = Dataset.objects.filter(person_id=adapter.person_id, purpose=Dataset.TRAIN).first()
    evaluation = adapter.eval_dataset
    if evaluation is None or evaluation.format != SUITE_FORMAT:
        graded = Dataset.objects.filter(person_id=adapter.person_id, purpose=Dataset.EVAL)
        evaluation = graded.filter(format=SUITE_FORMAT).first()
    if train is None:
        raise Invalid(f"{handle}: its person has no training data")
    if evaluation is None:
        raise Invalid(f"{handle}: its person has no evaluation set with graded items")
    return {
        "handle": adapter.handle,
        "train": {"id": train.pk, "sha256": train.sha256, "name": train.name},
        "eval": {"id": evaluation.pk, "sha256": evaluation.sha256, "name": evaluation.name},
        # The thresholds its promotions must meet, pinned like the data: a run passes when
        # it would pass this adapter's own gate as it stood when the study was made.
        "gate": gate_of(adapter),
    }


def _list_of(value, kind) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    )


def _default_base_name() -> str:
    from workers.engine.base_family import SMALLEST

    return SMALLEST


def cell_config(cell: StudyCell, seed: int) -> TrainingConfig:
    """The training settings of one run of a cell."""
    return TrainingConfig.from_dict(
        {
            **cell.study.training,
            **cell.study.training_per_base.get(cell.base.name, {}),
            "rank": cell.rank,
            "alpha": ALPHA_PER_RANK * cell.rank,
            "targets": cell.targets,
            "init": cell.init,
            "seed": seed,
        }
    )


# --- actions -----------------------------------------------------------------------------


def create_study(raw: dict, *, actor: Actor) -> Study:
    """Validate, write the study and its cells, and queue one job per cell."""
    authorize(actor, "study.run")
    clean = validate_study(raw)
    grid, cohort = clean["grid"], clean["cohort"]
    runs_per_cell = cohort["people"] * len(grid["seeds"])
    with transaction.atomic():
        study = Study.objects.create(**clean, created_by=actor.name)
        bases = {b.name: b for b in BaseModel.objects.filter(name__in=grid["bases"])}
        for base_name in grid["bases"]:
            for targets in grid["targets"]:
                for init in grid["inits"]:
                    for rank in grid["ranks"]:
                        cell = StudyCell.objects.create(
                            study=study,
                            base=bases[base_name],
                            rank=rank,
                            targets=targets,
                            init=init,
                            runs_total=runs_per_cell,
                        )
                        _launch_cell(cell, actor)
        audit.record(actor, "study.create", study, after={"grid": grid, "cohort": cohort})
    return study


def _launch_cell(cell: StudyCell, actor: Actor) -> Job:
    job = launch_job(
        Job.STUDY,
        actor,
        params={"cell": cell.pk, "study": cell.study_id, "cell_label": f"study {cell.study_id}: {cell}"},
        total_steps=cell.runs_total,
        audited=False,  # the study's own audit event covers its cells' jobs
    )
    StudyCell.objects.filter(pk=cell.pk).update(job=job)
    cell.job = job
    return job


def cancel_study(study: Study, *, actor: Actor) -> int:
    """Stop every queued or running cell; returns how many were stopped."""
    authorize(actor, "study.run")
    active = [c.job for c in study.cells.select_related("job") if c.job and c.job.is_active]
    if not active:
        raise Conflict(f"{study} has no queued or running cells to cancel")
    with transaction.atomic():
        for job in active:
            cancel_job(job, actor=actor, audited=False)
        audit.record(actor, "study.cancel", study, after={"cells": len(active)})
    return len(active)


def resume_study(study: Study, *, actor: Actor) -> int:
    """Queue a new job for every cell that is neither finished nor in progress; its runs
    already recorded are kept and skipped. Returns how many cells were queued."""
    authorize(actor, "study.run")
    cells = [
        c for c in _cells(study) if c.state in (CellState.FAILED, CellState.CANCELLED, CellState.PENDING)
    ]
    if not cells:
        raise Conflict(f"{study} has nothing to resume: every cell is finished or in progress")
    with transaction.atomic():
        for cell in cells:
            _launch_cell(cell.cell, actor)
        audit.record(actor, "study.resume", study, after={"cells": len(cells)})
    return len(cells)


def drop_erased_members(adapter_handles: Iterable[str]) -> None:
    """Take erased adapters out of every fleet cohort that names them: a study pins data
    that erasure deletes, so those members can never run again. Each cell then expects
    that many fewer runs, and a study left with only finished runs is complete. The
    cohort keeps a count of the members erased, not their names. Runs inside the caller's
    erasure transaction."""
    gone = set(adapter_handles)
    if not gone:
        return
    for study in Study.objects.select_for_update().filter(cohort__has_key="adapters"):
        members = study.cohort["adapters"]
        kept = [member for member in members if member["handle"] not in gone]
        dropped = len(members) - len(kept)
        if not dropped:
            continue
        study.cohort = {
            **study.cohort,
            "adapters": kept,
            "people": len(kept),
            "erased": study.cohort.get("erased", 0) + dropped,
        }
        study.save(update_fields=["cohort"])
        study.cells.update(runs_total=len(kept) * len(study.seeds))


def get_study(pk) -> Study:
    study = Study.objects.filter(pk=pk).first() if str(pk).isdigit() else None
    if study is None:
        raise NotFound(f"no study {pk}")
    return study


# --- reading -----------------------------------------------------------------------------


class CellState:
    PENDING, QUEUED, RUNNING, DONE, FAILED, CANCELLED = (
        "pending",
        "queued",
        "running",
        "done",
        "failed",
        "cancelled",
    )


@dataclass(slots=True)
class CellView:
    cell: StudyCell
    runs_done: int
    state: str
    reliability: CellReliability

    @property
    def footprint(self) -> Footprint:
        c = self.cell
        return Footprint(
            key=c.pk,
            base=c.base.name,
            rank=c.rank,
            targets=c.targets,
            init=c.init,
            payload_bytes=c.payload_bytes,
            stored_parameters=c.stored_parameters or 0,
            reliability=self.reliability,
            complete=self.runs_done >= c.runs_total,
        )


def _cells(study: Study) -> list[CellView]:
    cells = list(study.cells.select_related("base", "job"))
    runs: dict[int, list[StudyRun]] = {c.pk: [] for c in cells}
    for run in StudyRun.objects.filter(cell__study=study).only(
        "cell_id", "passed", "collapsed", "scores", "person", "seed"
    ):
        runs[run.cell_id].append(run)
    views = []
    for cell in cells:
        done = len(runs[cell.pk])
        state = cell_state(done, cell.runs_total, cell.job.state if cell.job else None)
        views.append(CellView(cell, done, state, cell_reliability(runs[cell.pk])))
    return views


def cell_state(runs_done: int, runs_total: int, job_state: str | None) -> str:
    """A cell's state from its recorded runs and its latest job's state (None: no job).
    A job still running after its last run is recorded has not yet written the cell's
    loss curve, so that cell is still running; a queued one will find nothing left to do."""
    if runs_done >= runs_total and job_state != Job.RUNNING:
        return CellState.DONE
    if job_state is None:
        return CellState.PENDING
    return {
        Job.QUEUED: CellState.QUEUED,
        Job.RUNNING: CellState.RUNNING,
        Job.FAILED: CellState.FAILED,
        Job.CANCELLED: CellState.CANCELLED,
        # a job that succeeded without every run recorded (a fleet member erased since) is pending
        Job.SUCCEEDED: CellState.PENDING,
    }[job_state]


def study_state(cell_states: Iterable[str]) -> str:
    """A study's state from its cells' states."""
    states = set(cell_states)
    if states <= {CellState.DONE}:
        return "finished"
    if states & {CellState.RUNNING, CellState.QUEUED}:
        return "running"
    if CellState.FAILED in states:
        return "failed"
    if CellState.CANCELLED in states:
        return "cancelled"
    return "pending"


@dataclass(frozen=True, slots=True)
class StudyProgress:
    state: str
    runs_done: int
    runs_total: int
    cells: int


def study_progress(studies: Iterable[Study]) -> dict[int, StudyProgress]:
    """State and run counts of several studies (a list page) in one query, reading no scores."""
    by_study: dict[int, list[tuple[int, int, str | None]]] = {}
    rows = (
        StudyCell.objects.filter(study__in=list(studies))
        .annotate(done=Count("runs"))
        .values_list("study_id", "done", "runs_total", "job__state")
    )
    for study_id, done, total, job_state in rows:
        by_study.setdefault(study_id, []).append((done, total, job_state))
    return {
        study_id: StudyProgress(
            state=study_state(cell_state(*cell) for cell in cells),
            runs_done=sum(done for done, _, _ in cells),
            runs_total=sum(total for _, total, _ in cells),
            cells=len(cells),
        )
        for study_id, cells in by_study.items()
    }


@dataclass(slots=True)
class StudyReport:
    study: Study
    cells: list[CellView]
    recommendations: list[Recommendation]

    @property
    def runs_done(self) -> int:
        return sum(c.runs_done for c in self.cells)

    @property
    def runs_total(self) -> int:
        return sum(c.cell.runs_total for c in self.cells)

    @property
    def state(self) -> str:
        return study_state(c.state for c in self.cells)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cell in self.cells:
            out[cell.state] = out.get(cell.state, 0) + 1
        return out


def study_report(study: Study) -> StudyReport:
    cells = _cells(study)
    return StudyReport(study, cells, recommend([c.footprint for c in cells], study.reliability_target))


# --- export ------------------------------------------------------------------------------

# The recipe each run trained with (as `cell_config` makes it), so a file of runs from
# several studies says which learning rate made which.
RECIPE_COLUMNS = ("learning_rate", "steps", "batch_size", "replay", "alpha")
RESULT_COLUMNS = (
    "study",
    "base",
    "rank",
    "targets",
    "init",
    "trainable_parameters",
    "stored_parameters",
    "payload_bytes",
    *RECIPE_COLUMNS,
    "person",
    "seed",
    *[f"score_{s}" for s in SUITES],
    *[f"bare_{s}" for s in SUITES],
    "passed",
    "gate_failures",
    "collapsed",
    "collapse_reasons",
    "first_loss",
    "final_loss",
    "train_seconds",
)


def result_rows(study: Study) -> Iterator[dict]:
    """Every recorded run of the study, flat, in grid order."""
    runs = (
        StudyRun.objects.filter(cell__study=study)
        .select_related("cell__base", "cell__study")
        .order_by("cell__base__name", "cell__targets", "cell__init", "cell__rank", "person", "seed")
    )
    recipes: dict[int, dict] = {}
    for run in runs.iterator(chunk_size=500):
        cell = run.cell
        if cell.pk not in recipes:
            config = cell_config(cell, seed=0).as_dict()
            recipes[cell.pk] = {key: config[key] for key in RECIPE_COLUMNS}
        yield {
            "study": study.pk,
            "base": cell.base.name,
            "rank": cell.rank,
            "targets": cell.targets,
            "init": cell.init,
            "trainable_parameters": cell.trainable_parameters,
            "stored_parameters": cell.stored_parameters,
            "payload_bytes": cell.payload_bytes,
            **recipes[cell.pk],
            "person": run.person,
            "seed": run.seed,
            **{f"score_{s}": run.scores.get(s) for s in SUITES},
            **{f"bare_{s}": run.bare_scores.get(s) for s in SUITES},
            "passed": run.passed,
            "gate_failures": "; ".join(run.gate_failures),
            "collapsed": run.collapsed,
            "collapse_reasons": "; ".join(run.collapse_reasons),
            "first_loss": run.first_loss,
            "final_loss": run.final_loss,
            "train_seconds": run.train_seconds,
        }


def results_csv(study: Study) -> Iterator[str]:
    """The results as CSV text, a header then one line per run, for a streamed response."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    for row in result_rows(study):
        writer.writerow(row)
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def results_json(study: Study) -> dict:
    report = study_report(study)
    return {
        "study": study_summary(report),
        "cells": [cell_summary(c) for c in report.cells],
        "runs": list(result_rows(study)),
    }


def cell_summary(c: CellView) -> dict:
    return {
        "base": c.cell.base.name,
        "rank": c.cell.rank,
        "targets": c.cell.targets,
        "init": c.cell.init,
        "state": c.state,
        "runs_done": c.runs_done,
        "runs_total": c.cell.runs_total,
        "trainable_parameters": c.cell.trainable_parameters,
        "stored_parameters": c.cell.stored_parameters,
        "payload_bytes": c.cell.payload_bytes,
        "reliability": c.reliability.as_dict(),
    }


def study_summary(report: StudyReport) -> dict:
    study = report.study
    return {
        "id": study.pk,
        "name": study.name,
        "state": report.state,
        "grid": study.grid,
        "cohort": study.cohort,
        "training": study.training,
        "training_per_base": study.training_per_base,
        "alpha_per_rank": ALPHA_PER_RANK,
        "reliability_target": study.reliability_target,
        "runs_done": report.runs_done,
        "runs_total": report.runs_total,
        "cells": report.counts(),
        "created_by": study.created_by,
        "created_at": study.created_at.isoformat(),
        "recommendations": [
            {
                "base": r.base,
                "target": r.target,
                "reason": r.reason,
                "chosen": None
                if r.chosen is None
                else {
                    "rank": r.chosen.rank,
                    "targets": r.chosen.targets,
                    "init": r.chosen.init,
                    "payload_bytes": r.chosen.payload_bytes,
                    "stored_parameters": r.chosen.stored_parameters,
                    "pass_rate": r.chosen.reliability.pass_rate,
                    "collapse_rate": r.chosen.reliability.collapse_rate,
                },
            }
            for r in report.recommendations
        ],
    }
