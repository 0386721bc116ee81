from django.core.management.base import BaseCommand

from adapters_app.lifecycle.base_models import ensure_micro_base


class Command(BaseCommand):
    help = "Build (offline, in about a second) and register the micro base model."

    def handle(self, *args, **options):
        base = ensure_micro_base()
        self.stdout.write(
            f"{base.name}: {base.parameters} parameters, digest {base.digest[:16]}… at {base.path}"
        )
