"""Find or install headless Chromium for browser tests; under CI=true a missing browser is a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser")
INSTALL = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
# A fresh machine may have no package lists yet; apt-get install then finds no chromium at all.
UPDATE = ["apt-get", "update", "-qq"]
APT_TIMEOUT = 900

# Flags that keep a headless run quiet, offline and independent of the user's profile.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _found() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _apt(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT, check=False)


@cache
def _install() -> tuple[str | None, str]:
    """Install Debian's chromium once per session; return its path or why it could not be installed."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None, "chromium is not installed and the tests do not run as root to install it"
    if shutil.which("apt-get") is None:
        return None, "chromium is not installed and apt-get is not available to install it"
    done = _apt(INSTALL)
    if done.returncode != 0:
        _apt(UPDATE)
        done = _apt(INSTALL)
    path = _found()
    if done.returncode != 0 or path is None:
        return None, f"apt-get install chromium failed ({done.returncode}): {done.stderr.strip()[-600:]}"
    return path, ""


def ensure_chromium() -> str:
    """Return the path of a Chromium binary, installing Debian's package when possible."""
    path = _found()
    if path:
        return path
    path, why = _install()
    if path:
        return path
    if _in_ci():
        pytest.fail(f"headless Chromium is required under CI=true: {why}")
    pytest.skip(why)


def run_headless(
    chromium: str, profile: Path, url: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run Chromium headless on a URL with a throwaway profile; return the finished process."""
    command = [chromium, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
