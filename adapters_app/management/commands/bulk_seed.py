"""Load a fleet at scale (e.g. a million adapters) to measure the console against.

The rows are synthetic: people `load-0000001`…, one adapter each, N revisions per
adapter in a parent chain with the last one live. Their payloads are not in the
store (a download of one fails its integrity check, as it should); everything the
console lists and pages through is real rows. PostgreSQL loads with COPY; other
databases with batched INSERTs. All in one transaction: an interrupted load leaves
nothing behind.
"""

import hashlib
import json
import time
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.core.management.color import no_style
from django.db import connection, transaction
from django.utils import timezone

from adapters_app.lifecycle.base_models import ensure_micro_base
from adapters_app.models import Adapter, BaseModel, Person, Revision

HANDLE_PREFIX = "load-"
CONFIG = json.dumps({"rank": 8, "alpha": 16, "steps": 60, "learning_rate": 0.005, "seed": 0})


class Command(BaseCommand):
    help = "Bulk-load synthetic people, adapters and revisions (one transaction) to measure the console."

    def add_arguments(self, parser):
        parser.add_argument("--adapters", type=int, default=1_000_000, help="one person per adapter")
        parser.add_argument("--revisions-per-adapter", type=int, default=3)
        parser.add_argument("--base", default="", help="registered base model name (default: the micro base)")
        parser.add_argument("--batch", type=int, default=20_000, help="rows per write")
        parser.add_argument(
            "--if-empty", action="store_true", help="do nothing (rather than fail) when a fleet is loaded"
        )

    def handle(self, *args, adapters, revisions_per_adapter, base, batch, if_empty, **options):
        if adapters < 1 or revisions_per_adapter < 1 or batch < 1:
            raise CommandError("--adapters, --revisions-per-adapter and --batch must be at least 1")
        if Person.objects.filter(handle__startswith=HANDLE_PREFIX).exists():
            if if_empty:
                self.stdout.write("a loaded fleet exists; not loading another")
                return
            raise CommandError(f"people named {HANDLE_PREFIX}… exist already; load into an empty database")
        model = BaseModel.objects.filter(name=base).first() if base else ensure_micro_base()
        if model is None:
            raise CommandError(f"no base model {base!r}")
        started = time.monotonic()
        with transaction.atomic():
            load(self, model, adapters, revisions_per_adapter, batch)
        if connection.vendor == "postgresql":
            # Fresh statistics, so the planner (and the overview's estimates) see the new rows.
            with connection.cursor() as cursor:
                for model in (Person, Adapter, Revision):
                    cursor.execute(f"ANALYZE {model._meta.db_table}")
        elapsed = time.monotonic() - started
        self.stdout.write(
            f"loaded {adapters:,} people and adapters, {adapters * revisions_per_adapter:,} revisions "
            f"in {elapsed:.0f}s"
        )


def load(command: BaseCommand, base: BaseModel, adapters: int, per_adapter: int, batch: int) -> None:
    first = {
        m: (m.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
        for m in (Person, Adapter, Revision)
    }
    now = timezone.now()
    writer = RowWriter()
    for start in range(0, adapters, batch):
        stop = min(adapters, start + batch)
        people, adapter_rows, revisions = [], [], []
        for i in range(start, stop):
            person_id, adapter_id = first[Person] + i, first[Adapter] + i
            created = now - timedelta(minutes=(adapters - i) % 525_600)  # spread over a year
            first_revision = first[Revision] + i * per_adapter
            people.append(
                {
                    "id": person_id,
                    "handle": f"{HANDLE_PREFIX}{i + 1:07d}",
                    "display_name": "",
                    "created_at": created,
                }
            )
            adapter_rows.append(
                {
                    "id": adapter_id,
                    "person_id": person_id,
                    "name": "assistant",
                    "base_id": base.pk,
                    "base_digest": base.digest,
                    "live_revision_id": first_revision + per_adapter - 1,
                    "description": "",
                    "eval_dataset_id": None,
                    "gate": "{}",
                    "auto_promote": False,
                    "created_at": created,
                    # No evaluation set, so no gate: what refresh_gate_status would store.
                    "last_trained_at": created + timedelta(seconds=per_adapter - 1),
                    "gate_status": Adapter.UNGATED,
                }
            )
            for n in range(per_adapter):
                revision_id = first_revision + n
                digest = hashlib.sha256(f"bulk-seed:{revision_id}".encode()).hexdigest()
                revisions.append(
                    {
                        "id": revision_id,
                        "adapter_id": adapter_id,
                        "number": n + 1,
                        "sha256": digest,
                        "size_bytes": 74_000,
                        "rank": 8,
                        "parameters": 18_432,
                        "parent_id": revision_id - 1 if n else None,
                        "dataset_id": None,
                        "dataset_sha256": digest,
                        "dataset_rows": 100,
                        "training_config": CONFIG,
                        "seed": 0,
                        "init_method": "default",
                        "base_digest": base.digest,
                        "code_version": "bulk-seed",
                        "job_id": None,
                        "created_by": "bulk-seed",
                        "created_at": created + timedelta(seconds=n),
                        "final_loss": 0.5 / (n + 1),
                        "updates": "{}",
                    }
                )
        writer.write(Person, people)
        writer.write(Adapter, adapter_rows)
        writer.write(Revision, revisions)
        command.stdout.write(f"  {stop:,}/{adapters:,} adapters")
    with connection.cursor() as cursor:
        for statement in connection.ops.sequence_reset_sql(no_style(), [Person, Adapter, Revision]):
            cursor.execute(statement)


class RowWriter:
    """Rows as {attname: value}; COPY on PostgreSQL, executemany elsewhere."""

    def write(self, model, rows: list[dict]) -> None:
        if not rows:
            return
        table = model._meta.db_table
        columns = list(rows[0])
        quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                with cursor.cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row([row[c] for c in columns])
            else:
                marks = ", ".join(["%s"] * len(columns))
                cursor.executemany(
                    f"INSERT INTO {table} ({quoted}) VALUES ({marks})",
                    [[row[c] for c in columns] for row in rows],
                )
