"""`manage.py serve_web`: Django's threaded development server with a deeper listen backlog.

`runserver` listens with a backlog of 10 connections; a burst of 32 clients (the load
test, a busy demo) overflows it and the kernel resets connections before Django sees
them. This is the same server with room for bursts. A production deployment puts a
WSGI/ASGI server (gunicorn, uvicorn) in front instead.
"""

from django.core.management.commands.runserver import Command as RunserverCommand
from django.core.servers.basehttp import WSGIServer


class BurstTolerantWSGIServer(WSGIServer):
    request_queue_size = 256


class Command(RunserverCommand):
    help = "Run the threaded web server with a listen backlog of 256 (demo and load test)."
    server_cls = BurstTolerantWSGIServer
