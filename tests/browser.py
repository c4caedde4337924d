"""A headless Chromium driven through the Chrome DevTools protocol (CDP), for the HTML report.

Debian's ``chromium`` package and ``websocket-client`` are all it needs: no
browser download, no network. ``load`` opens a page and returns what a person
would see go wrong (console errors, uncaught exceptions, failed requests) and
lets the caller evaluate JavaScript in it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageProblems:
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        # Chromium's helper processes may still write into the profile as it goes
        self._profile = tempfile.TemporaryDirectory(prefix="disteval-chromium-",
                                                    ignore_cleanup_errors=True)
        self._proc: subprocess.Popen[str] | None = None
        self._ws: Any = None
        self._id = 0

    def __enter__(self) -> Browser:
        import websocket  # websocket-client

        self._proc = subprocess.Popen(
            [self.executable, "--headless", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--remote-debugging-port=0", f"--user-data-dir={self._profile.name}",
             "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its renderer, GPU and crash helpers end with it
        try:
            port = self._port()
            deadline = time.monotonic() + 30
            while True:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                            timeout=5) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self._ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"],
                                                   timeout=30, suppress_origin=True)
        except BaseException:
            # `with` calls __exit__ only after __enter__ returned: a Chromium that did not
            # come up would otherwise outlive the test, and its pipe, process and profile
            # surface as unraisable warnings in the next test's setup
            self.__exit__()
            raise
        return self

    def _port(self) -> int:
        assert self._proc is not None and self._proc.stderr is not None
        deadline = time.monotonic() + 30
        seen = []
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            if not line and self._proc.poll() is not None:
                break
            seen.append(line)
            match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if match:
                return int(match.group(1))
        raise RuntimeError("chromium did not start its DevTools server:\n" + "".join(seen))

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # helpers left behind
            except (ProcessLookupError, PermissionError):
                pass
            if self._proc.stderr is not None:
                self._proc.stderr.close()
        self._profile.cleanup()

    def _send(self, method: str, **params: Any) -> int:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        return self._id

    def _events_until(self, done: Any, problems: PageProblems, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            method = message.get("method")
            params = message.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error",
                                                                                "assert"):
                problems.console_errors.append(" ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                problems.exceptions.append(
                    details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                problems.console_errors.append(params["entry"]["text"])
            elif method == "Network.requestWillBeSent":
                problems.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                problems.failed_requests.append(params.get("errorText", "?"))
            if done(message):
                return message
        raise TimeoutError("the page did not finish loading")

    def load(self, url: str, timeout: float = 30) -> PageProblems:
        problems = PageProblems()
        for domain in ("Page", "Runtime", "Log", "Network"):
            wanted = self._send(f"{domain}.enable")
            self._events_until(lambda m, w=wanted: m.get("id") == w, problems, timeout)
        self._send("Page.navigate", url=url)
        self._events_until(lambda m: m.get("method") == "Page.loadEventFired", problems,
                           timeout)
        # the events a page's scripts raise right after load arrive before this answer
        self.evaluate("1", problems)
        return problems

    def evaluate(self, expression: str, problems: PageProblems | None = None) -> Any:
        wanted = self._send("Runtime.evaluate", expression=expression, returnByValue=True)
        answer = self._events_until(lambda m: m.get("id") == wanted,
                                    problems or PageProblems(), 30)
        result = answer["result"]
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")
