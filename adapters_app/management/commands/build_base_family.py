"""Build (or reuse from cache) and register the default base family."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import register_base_model
from adapters_app.models import BaseModel
from workers.engine.base_family import FAMILY, ConsoleProgress, build_base, is_built


class Command(BaseCommand):
    help = "Pretrain the default base family offline (cached by spec) and register each size."

    def add_arguments(self, parser):
        parser.add_argument(
            "--sizes", default=",".join(FAMILY), help=f"comma-separated names from {', '.join(FAMILY)}"
        )
        parser.add_argument("--rebuild", action="store_true", help="ignore the cache and build again")

    def handle(self, *args, sizes, rebuild, **options):
        names = [n.strip() for n in sizes.split(",") if n.strip()]
        unknown = [n for n in names if n not in FAMILY]
        if unknown:
            raise CommandError(f"unknown base(s) {', '.join(unknown)}; choose from {', '.join(FAMILY)}")
        for name in names:
            spec = FAMILY[name]
            dest = Path(settings.MINT_BASES_DIR) / name
            if rebuild or not is_built(spec, dest):
                progress = ConsoleProgress(name, write=lambda line: self.stdout.write(line, ending=""))
                build_base(spec, dest, on_step=progress)
                self.stdout.write("")
            else:
                self.stdout.write(f"{name}: cached at {dest}")
            stale = BaseModel.objects.filter(name=name).exclude(path=str(dest.resolve()))
            if stale.exists():
                raise CommandError(f"{name} is registered from another folder ({stale.get().path})")
            base = BaseModel.objects.filter(name=name).first()
            if base is None or not is_built(spec, base.path):
                base = register_base_model(name, dest, actor=Actor.system("cli"))
            self.stdout.write(f"{name}: {base.parameters:,} parameters, digest {base.digest[:16]}…")
