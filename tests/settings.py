"""Test settings: the real settings, with test state kept under var/test/.

Environment defaults are set before the real settings read them, so a test
run never shares a Redis socket, database file or store with a running demo.
"""

import os
from pathlib import Path

_VAR = Path(__file__).resolve().parent.parent / "var" / "test"
os.environ.setdefault("MINT_VAR_DIR", str(_VAR))
# One queue per test session: a stale message from an earlier run can never reach this run's worker.
os.environ.setdefault("MINT_QUEUE", f"mint-test-{os.getpid()}")

from mintweb.settings import *  # noqa: E402, F403

# Test users' passwords guard nothing: a fast hash saves about 1.5 s of PBKDF2 for every test
# that makes a user with a password (the shared `actor` fixture does). Production keeps Django's.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
