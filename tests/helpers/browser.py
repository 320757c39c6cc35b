"""A real headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol, for the
tests of web pages the package serves (the admin dashboard).

Why the DevTools protocol over a pipe (``--remote-debugging-pipe``: commands on the browser's fd 3,
answers on its fd 4, each a JSON text ending in a NUL byte) rather than ``--dump-dom``: the test can
wait in real time until the page's scripts have drawn what it expects (a crawl takes real time on
the server, which a virtual time budget does not wait for), read the DOM then, and take a screenshot
of that same page, with nothing but the standard library (no Playwright, no websocket client).

``unavailable()`` says why no browser can run here (None when one can). Every browser is started
with a fresh profile directory and stopped by its PID.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe")


def executable() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def unavailable() -> str | None:
    if executable() is None:
        return ("no Chromium here: .ci/run installs Debian's chromium package when it runs as root with apt-get "
                "(by hand: apt-get install -y chromium)")
    return None


class BrowserError(AssertionError):
    pass


class Chromium:
    """One headless browser with one page. ``evaluate`` runs JavaScript in the page, ``screenshot`` saves a PNG."""

    def __init__(self, profile: Path, *, width: int = 1280, height: int = 900):
        exe = executable()
        if exe is None:
            raise BrowserError(unavailable())
        commands_r, self._commands = os.pipe()  # we write, the browser reads on its fd 3
        self._answers, answers_w = os.pipe()  # the browser writes on its fd 4, we read

        def fds() -> None:  # in the child, before exec: the two pipe ends at 3 and 4
            low, high = os.dup(commands_r), os.dup(answers_w)
            os.dup2(low, 3)
            os.dup2(high, 4)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                      "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=fds,
                                     close_fds=False)  # Python's own fds are not inheritable (PEP 446); 3 and 4 are
        os.close(commands_r)
        os.close(answers_w)
        self._buf = b""
        self._next = 0
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.call("Page.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False}, session=True)
        except BaseException:
            self.close()
            raise

    def call(self, method: str, params: dict | None = None, *, session: bool = False, timeout: float = 30) -> Any:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") != self._next:
                continue  # an event, or an answer to someone else
            if "error" in answer:
                raise BrowserError(f"{method}: {answer['error']}")
            return answer["result"]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("the browser did not answer in time")
            if select.select([self._answers], [], [], left)[0]:
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise BrowserError(f"the browser exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")
                self._buf += chunk
        text, _, self._buf = self._buf.partition(b"\0")
        return json.loads(text)

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, session=True)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> Any:
        """Evaluate ``expression`` until it is truthy (its value), or raise after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError as exc:  # the page is still loading (no such element yet, a new document)
                value = exc
            if value and not isinstance(value, BrowserError):
                return value
            time.sleep(0.1)
        raise BrowserError(f"still false after {timeout} s: {expression} (last value {value!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._commands, self._answers):
            try:
                os.close(fd)
            except OSError:
                pass
        self.proc.stderr.close()

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
