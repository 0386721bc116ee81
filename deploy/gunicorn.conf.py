"""gunicorn's settings for the MinT web server (the console, /api/ and /v1):

    gunicorn -c deploy/gunicorn.conf.py

Worker class `gthread`: each process runs a pool of threads, one request per thread. A /v1
stream holds its thread (not a whole process) for as long as it lasts, up to
MINT_INFERENCE_TIMEOUT_SECONDS, while the process's other threads answer everything else;
the view's generator is sync code that waits on Redis, so no ASGI server is needed for it.
One process can hold MINT_WEB_THREADS requests at once, a host MINT_WEB_WORKERS times that.

Environment (besides the settings every process reads, mintweb/settings.py):
    MINT_WEB_BIND      where to listen, comma-separated           default 0.0.0.0:8000
    MINT_WEB_WORKERS   processes                                  default 2
    MINT_WEB_THREADS   threads per process: requests at once      default 32
    FORWARDED_ALLOW_IPS  gunicorn's own: the proxy addresses whose X-Forwarded-* it believes
                         (default 127.0.0.1,::1)
    PROMETHEUS_MULTIPROC_DIR  a folder: /metrics adds up every process's counters (emptied
                              here at start)
"""

import os
import shutil
import sys
from pathlib import Path

# This checkout's code, wherever gunicorn is started from (and before an installed copy).
# Names of this file's own start with _: gunicorn reads every other name as a setting.
_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

# The settings themselves, read once in the master: a nonsense value (or DEBUG=false without
# a SECRET_KEY) stops the server before it forks, not in every worker.
from mintweb import settings as _mint  # noqa: E402

wsgi_app = "mintweb.wsgi:application"
chdir = str(_ROOT)
bind = [address for address in os.environ.get("MINT_WEB_BIND", "0.0.0.0:8000").split(",") if address]
workers = _mint.envint("MINT_WEB_WORKERS", "2")
worker_class = "gthread"
threads = _mint.envint("MINT_WEB_THREADS", "32")
proc_name = "mint-web"

# For gthread this is a heartbeat, not a request limit: each process's main loop checks in
# with the master about once a second whatever its threads are doing, and the master
# restarts a process silent this long (stuck, not busy). A stream of any length is fine.
timeout = 30
# On a restart or stop (SIGHUP, SIGTERM: a deploy) each process stops accepting and lets the
# requests it holds finish: long enough for a stream begun just before to run to its end.
# A systemd unit or compose service must allow at least this long before it kills.
graceful_timeout = _mint.MINT_INFERENCE_TIMEOUT_SECONDS + 10
# Behind a proxy that keeps connections open to us: longer than the proxy's idle wait on a
# connection would be better still, so gunicorn is not the one to close it mid-reuse.
keepalive = 5

# One line per request on stdout, with its time in milliseconds (a stream's whole length).
accesslog = "-"
access_log_format = '%(h)s %(t)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s"'
errorlog = "-"

# The heartbeat file is touched every second: on a memory filesystem where there is one, so
# a slow disk cannot stall it (gunicorn's own advice, and what containers have).
if Path("/dev/shm").is_dir():
    worker_tmp_dir = "/dev/shm"
# No control socket: systemd or compose restarts the server, and the default place
# ($HOME/.gunicorn/) would be shared by two servers of one user on one host.
control_socket_disable = True


def on_starting(server) -> None:
    """Counters left in the multiprocess folder by an earlier run would be added to this one's."""
    if folder := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(folder, ignore_errors=True)
        Path(folder).mkdir(parents=True)


def child_exit(server, worker) -> None:
    """A process that exited (restarted, or recycled) leaves its counters for /metrics to add
    up; prometheus-client drops only its live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
