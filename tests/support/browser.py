"""Find or install headless Chromium for browser tests; under CI=true a missing browser is a failure."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Any

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
)
# Every host name fails to resolve unless a test routes them elsewhere, so nothing leaves the machine.
OFFLINE = "MAP * ~NOTFOUND"


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
    chromium: str, profile: Path, url: str, *args: str, resolver_rules: str = OFFLINE, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run Chromium headless on a URL with a throwaway profile; return the finished process."""
    command = [
        chromium,
        *HEADLESS_FLAGS,
        f"--host-resolver-rules={resolver_rules}",
        f"--user-data-dir={profile}",
        *args,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


class DevToolsError(RuntimeError):
    """Chromium answered a DevTools command with an error, died, or did not answer in time."""


class DevTools:
    """Headless Chromium driven over --remote-debugging-pipe with the DevTools protocol, stdlib only."""

    def __init__(self, chromium: str, profile: Path, *args: str, timeout: float = 60) -> None:
        to_child_read, self._write = os.pipe()
        self._read, from_child_write = os.pipe()

        def wire() -> None:
            # Chromium reads commands on fd 3 and writes answers on fd 4; move the pipe ends there
            # through high numbers so neither dup2 clobbers the other.
            high_read = fcntl.fcntl(to_child_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(from_child_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self._log = (profile.parent / f"{profile.name}.log").open("wb")
        command = [
            chromium,
            *HEADLESS_FLAGS,
            f"--host-resolver-rules={OFFLINE}",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            *args,
            "about:blank",
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=wire,
            pass_fds=(3, 4),
        )
        os.close(to_child_read)
        os.close(from_child_write)
        self._timeout = timeout
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ask Chromium to quit, then make sure it has."""
        with contextlib.suppress(DevToolsError, OSError):
            self.call("Browser.close", timeout=10)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DevToolsError("Chromium did not answer in time")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 16)
                if not chunk:
                    raise DevToolsError(f"Chromium closed the DevTools pipe (exit {self._process.poll()})")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 0,
    ) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self._write, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self._timeout)
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for(self, method: str, session: str, timeout: float = 0) -> dict[str, Any]:
        """Return the next event `method` of a session, waiting for it if it has not come yet."""
        deadline = time.monotonic() + (timeout or self._timeout)
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    self.events.remove(event)
                    return event
            seen = len(self.events)
            self.events.append(self._message(deadline))

    def open(self, url: str, width: int = 1280, height: int = 2000) -> str:
        """Open `url` in a new tab of the given size, wait for its load event and return the session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})
        session = str(
            self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        )
        self.call("Network.enable", session=session)
        self.call("Page.enable", session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def requests(self, session: str) -> list[str]:
        """Return the URLs a tab asked for so far, its own documents included."""
        return [
            str(e["params"]["request"]["url"])
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session
        ]

    def evaluate(self, session: str, expression: str) -> Any:
        """Return the JSON value of a JavaScript expression evaluated in the tab."""
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
        )
        if "exceptionDetails" in result:
            raise DevToolsError(str(result["exceptionDetails"]))
        return result["result"].get("value")

    def pdf(self, session: str) -> bytes:
        """Return the tab printed to PDF with its own print styles."""
        printed = self.call(
            "Page.printToPDF", {"printBackground": True, "preferCSSPageSize": True}, session=session
        )
        return base64.b64decode(printed["data"])

    def screenshot(self, session: str) -> bytes:
        """Return a PNG of the whole page."""
        shot = self.call(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session
        )
        return base64.b64decode(shot["data"])
