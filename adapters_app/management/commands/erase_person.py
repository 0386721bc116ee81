from django.core.management.base import BaseCommand, CommandError

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.lifecycle.people import describe_erasure, erase_person, get_person


class Command(BaseCommand):
    help = (
        "Erase a person on request: their adapters, revisions, datasets, stored blobs and the "
        "footprint-study runs trained on their data. An audit tombstone names what was erased."
    )

    def add_arguments(self, parser):
        parser.add_argument("handle")
        parser.add_argument("--reason", required=True, help="why (recorded in the audit log)")

    def handle(self, *args, handle, reason, **options):
        try:
            counts = erase_person(get_person(handle), actor=Actor.system(via="cli"), reason=reason)
        except LifecycleError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"erased {handle}: {describe_erasure(counts)}")
