import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Settings the tests below choose; one set in the shell running the tests must not leak in.
CHOSEN = (
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "MINT_HTTPS_ONLY",
    "MINT_HSTS_",
    "MINT_BEHIND_TLS_PROXY",
)


def clean_env(**env) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(CHOSEN)}, **env}


def run_settings(code: str = "import mintweb.settings", **env) -> subprocess.CompletedProcess:
    """Run `code` (by default: just import the settings) in a fresh interpreter with `env`."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_refuses_to_start_without_a_secret_key_when_debug_is_off():
    result = run_settings(DEBUG="false")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_it_starts_with_a_secret_key_when_debug_is_off():
    assert run_settings(DEBUG="false", SECRET_KEY="s3cret-for-test").returncode == 0


def test_it_fails_loudly_on_a_nonsense_boolean():
    result = run_settings(DEBUG="maybe")
    assert "is not a boolean" in result.stderr


def test_it_refuses_the_development_key_when_debug_is_off():
    result = run_settings(DEBUG="false", SECRET_KEY="dev-only-insecure-key-do-not-use-in-production")
    assert result.returncode != 0
    assert "SECRET_KEY is a development key" in result.stderr


# What a production deployment sets (README, "Production"): everything else is a default.
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "k8Qw1v-Zr3pXy7!mN2sLd9@tH5uJb0eF4gC6aV_oR1iK8nM3wE7y",
    "ALLOWED_HOSTS": "console.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://console.example.com",
    "MINT_BEHIND_TLS_PROXY": "true",
}


def manage(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=clean_env(DJANGO_SETTINGS_MODULE="mintweb.settings", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_deployment_check_is_clean_under_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


SHOW = (
    "import mintweb.settings as s; "
    "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, "
    "getattr(s, 'SECURE_PROXY_SSL_HEADER', None), s.X_FRAME_OPTIONS)"
)


def test_production_settings_serve_https_only_and_trust_the_proxy_they_are_told_to():
    result = run_settings(SHOW, **PRODUCTION)
    assert result.stdout == "True True True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https') DENY\n", (
        result.stderr
    )
    # Without a proxy that sets X-Forwarded-Proto, a client's claim of HTTPS is not believed.
    result = run_settings(SHOW, **{**PRODUCTION, "MINT_BEHIND_TLS_PROXY": "false"})
    assert result.stdout == "True True True 31536000 None DENY\n", result.stderr


def test_debug_settings_speak_plain_http():
    result = run_settings(SHOW, DEBUG="true")
    assert result.stdout == "False False False 0 None DENY\n", result.stderr
