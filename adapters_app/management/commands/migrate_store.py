"""`manage.py migrate_store --to URL`: copy every blob into another store, each verified."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from adapters_app.lifecycle.storage import migrate_blobs, store_for
from workers.engine.store import StoreError


class Command(BaseCommand):
    help = (
        "Copy every blob (adapter payloads, datasets) from the configured store (or --from) into "
        "--to, e.g. from file:// to s3://bucket/prefix. Each blob is verified by its sha256 on "
        "both sides; blobs already there are checked, not copied again, so an interrupted run "
        "resumes. Point MINT_STORE at the new store afterwards."
    )

    def add_arguments(self, parser):
        parser.add_argument("--to", required=True, dest="target", help="file:///path or s3://bucket/prefix?…")
        parser.add_argument("--from", dest="source", default=None, help="default: MINT_STORE")

    def handle(self, *args, target, source, **options):
        source = source or settings.MINT_STORE
        if source == target:
            raise CommandError("--to is the store blobs are copied from; name another one")
        try:
            moved = migrate_blobs(store_for(source), store_for(target), on_blob=self._progress)
        except StoreError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{moved.seen} blobs: {moved.copied} copied ({moved.bytes_copied / 2**20:.1f} MiB), "
            f"{moved.already_there} already there (verified), {len(moved.refused)} refused"
        )
        for sha256, why in moved.refused.items():
            self.stderr.write(f"refused {sha256}: {why}")
        if moved.refused:
            raise CommandError(
                f"{len(moved.refused)} blob(s) were not copied: they are missing or corrupted in the source"
            )

    def _progress(self, moved, sha256: str) -> None:
        if moved.seen % 100 == 0:
            self.stdout.write(f"  {moved.seen} blobs… ({moved.copied} copied)")
