from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for a user and print it (it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}; create one with `manage.py createsuperuser`")
        key, raw = ApiKey.issue(user, name=name)
        audit.record(Actor.from_user(user, via="cli"), "api_key.create", key)
        self.stdout.write(raw)
