"""Open a page in a real headless Chromium, offline, over the DevTools protocol on a pipe (no extra package): what
the page logged as errors, every URL it requested, and a screenshot. Used by the page tests.

Chromium comes from Debian's `chromium` package (CI installs it with apt); `chromium_path()` is None without it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def chromium_path() -> str | None:
    """The Chromium executable, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@dataclass
class PageVisit:
    """What happened when a page was opened: console errors and uncaught exceptions, requested URLs, a screenshot."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: np.ndarray | None = None  # [H, W, 3] floats in [0, 1]
    title: str = ""
    text: str = ""


class Pipe:
    """The DevTools protocol over --remote-debugging-pipe: JSON messages separated by NUL bytes on fds 3 and 4."""

    def __init__(self, exe: str, profile: str, size: tuple[int, int]) -> None:
        self.to_browser_r, self.to_browser_w = os.pipe()
        self.from_browser_r, self.from_browser_w = os.pipe()
        # the child reads commands on fd 3 and writes replies on fd 4
        def child_fds() -> None:  # via fresh copies: a pipe fd may itself be 3 or 4 (and is close-on-exec)
            read, write = os.dup(self.to_browser_r), os.dup(self.from_browser_w)
            os.dup2(read, 3)
            os.dup2(write, 4)

        args = [exe, "--headless", "--no-sandbox", "--disable-gpu-sandbox", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # offline: nothing can leave
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "about:blank"]
        # close_fds=False: the fds dup2'ed to 3 and 4 in the child must survive the exec (the pipe's own fds are
        # close-on-exec)
        self.proc = subprocess.Popen(args, preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(self.to_browser_r)
        os.close(self.from_browser_w)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        """Send one command and wait for its reply (events that arrive meanwhile are kept)."""
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(method)

    def read(self) -> dict[str, Any]:
        """The next message from the browser."""
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_browser_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        """Read until an event `method` has arrived."""
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            self.events.append(self.read())

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self.to_browser_w)
        os.close(self.from_browser_r)


def visit(page: Path, size: tuple[int, int] = (1200, 900), settle: float = 1.5, scroll_to: str | None = None
          ) -> PageVisit:
    """Open `page` (a local file) with the network off; collect errors and requests, then screenshot the viewport
    (after scrolling the element with id `scroll_to` into view, when given)."""
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        pipe = Pipe(exe, profile, size)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": size[0], "height": size[1],
                                                              "deviceScaleFactor": 1, "mobile": False},
                      session=session)
            pipe.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired")
            time.sleep(settle)  # plotly draws on load; WebGL frames land shortly after
            if scroll_to:
                pipe.send("Runtime.evaluate", {"expression": f"document.getElementById({scroll_to!r})"
                                               ".scrollIntoView()"}, session=session)
                time.sleep(0.5)
            title = pipe.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                              session=session)["result"].get("value", "")
            text = pipe.send("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True},
                             session=session)["result"].get("value", "")
            shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        finally:
            pipe.close()
    out = PageVisit(title=title, text=text)
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            out.errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            out.requests.append(params["request"]["url"])
    import matplotlib.image as mpimg

    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(base64.b64decode(shot))
        f.flush()
        out.screenshot = np.asarray(mpimg.imread(f.name))[..., :3]
    return out


def leaving(requests: list[str]) -> list[str]:
    """The requested URLs that would leave the file (anything but file:, data: and blob: URLs)."""
    return [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))]


def drawn(screenshot: np.ndarray, min_colours: int = 20, min_ink: float = 0.05) -> bool:
    """Whether a screenshot shows a drawn plot: many distinct colours and a share of non-white pixels (not blank,
    not a single colour)."""
    pixels = (screenshot.reshape(-1, 3) * 255).round().astype(np.uint8)
    colours = len(np.unique(pixels.view([("", np.uint8)] * 3)))
    ink = float((pixels.min(axis=1) < 240).mean())
    return colours >= min_colours and ink >= min_ink
