"""Build (or reuse from cache) and register the default base family."""

from django.core.management.base import BaseCommand, CommandError

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import ensure_family_base
from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.management.progress import progress_bar
from workers.engine.base_family import FAMILY


class Command(BaseCommand):
    help = "Pretrain the default base family offline (cached by spec) and register each size."

    def add_arguments(self, parser):
        parser.add_argument(
            "--sizes", default=",".join(FAMILY), help=f"comma-separated names from {', '.join(FAMILY)}"
        )
        parser.add_argument("--rebuild", action="store_true", help="ignore the cache and build again")
        parser.add_argument(
            "--device",
            default="cpu",
            help="where to pretrain (cpu, cuda, cuda:1…); the digest is reproducible per device kind",
        )

    def handle(self, *args, sizes, rebuild, device, **options):
        names = [n.strip() for n in sizes.split(",") if n.strip()]
        unknown = [n for n in names if n not in FAMILY]
        if unknown:
            raise CommandError(f"unknown base(s) {', '.join(unknown)}; choose from {', '.join(FAMILY)}")
        for name in names:
            try:
                base = ensure_family_base(
                    name,
                    actor=Actor.system("cli"),
                    rebuild=rebuild,
                    device=device,
                    on_step=progress_bar(self.stdout, name),
                    log=self.stdout.write,
                )
            except LifecycleError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"{name}: {base.parameters:,} parameters, digest {base.digest[:16]}…")
