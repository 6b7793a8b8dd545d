"""A lease beside the store (`<store>.lease`): one job writes a store at a time.

The holder renews it every ttl/4 seconds from a background thread; a lease not renewed within ttl, or held
by a process that no longer exists on this host, is stale and may be taken over. A second job finds a live
lease and is refused with a message naming the holder, so it never corrupts the first job's store.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from engine.core.errors import UserError


def holder_id() -> str:
    """host:pid, plus the SLURM job id when there is one."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"{socket.gethostname()}:{os.getpid()}" + (f" (slurm job {job})" if job else "")


class StoreLease:
    """Exclusive, expiring right to write one store; use as a context manager."""

    def __init__(self, store: str | Path, ttl: float = 120.0) -> None:
        self.store = Path(store)
        self.path = self.store.with_name(self.store.name + ".lease")
        self.ttl = ttl
        self.holder = holder_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StoreLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease or raise a UserError naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self._read()
                if info is not None and not self._stale(info):
                    left = info["expires"] - time.time()
                    raise UserError(
                        f"store {self.store} is being written by {info['holder']} (lease {self.path} expires in "
                        f"{left:.0f} s unless renewed); wait for that job to end, or use another name="
                    ) from None
                try:  # stale: move it aside atomically, so only one taker wins
                    os.rename(self.path, f"{self.path}.stale.{os.getpid()}")
                    os.unlink(f"{self.path}.stale.{os.getpid()}")
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._info(), f)
            self._thread = threading.Thread(target=self._renew_loop, daemon=True, name="store-lease")
            self._thread.start()
            return
        raise UserError(f"could not take the lease {self.path}: another job keeps taking it; try again")

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        info = self._read()
        if info is not None and info.get("holder") == self.holder:
            self.path.unlink(missing_ok=True)

    def _info(self) -> dict[str, Any]:
        return {"holder": self.holder, "pid": os.getpid(), "host": socket.gethostname(),
                "expires": time.time() + self.ttl}

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _stale(self, info: dict[str, Any]) -> bool:
        if info.get("expires", 0) < time.time():
            return True
        if info.get("host") == socket.gethostname():
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            info = self._read()
            if info is None or info.get("holder") != self.holder:
                return
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._info()))
            tmp.replace(self.path)
