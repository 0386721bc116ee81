"""The code version recorded in every revision's provenance."""

import functools
import subprocess
from pathlib import Path

RELEASE = "0.1.0"


@functools.cache
def code_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return RELEASE
    return f"{RELEASE}+g{sha}{'.dirty' if dirty else ''}" if sha else RELEASE
