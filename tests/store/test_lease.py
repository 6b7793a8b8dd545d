"""engine.store.lease.StoreLease alone (no run): acquire and release, a live holder refused by name, a stale lease
(expired, or its process gone) taken over, renewal while held. The leases of killed and contending runs are in
e2e/test_resume_and_lease.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.core.errors import UserError
from engine.store.lease import StoreLease, holder_id


def held(path: Path) -> dict:
    return json.loads(path.read_text())


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path: Path) -> None:
    store = tmp_path / "run" / "landscape.zarr"
    lease = StoreLease(store, ttl=60)
    assert lease.path == tmp_path / "run" / "landscape.zarr.lease"
    before = time.time()
    with lease:
        info = held(lease.path)
        assert info["holder"] == holder_id() and holder_id().startswith(f"{socket.gethostname()}:{os.getpid()}")
        assert (info["pid"], info["host"]) == (os.getpid(), socket.gethostname())
        assert before + 60 <= info["expires"] <= time.time() + 60
    assert not lease.path.exists()
    with StoreLease(store, ttl=60):  # free again
        assert lease.path.exists()
    assert not lease.path.exists()


def test_a_live_holder_is_refused_by_name(tmp_path: Path) -> None:
    store = tmp_path / "landscape.zarr"
    with StoreLease(store, ttl=60):
        with pytest.raises(UserError) as refused:
            StoreLease(store, ttl=60).acquire()  # this process is alive: the lease is not stale
        message = str(refused.value)
        assert "\n" not in message and f"store {store} is being written by {holder_id()}" in message, message
    lease = StoreLease(store, ttl=60)
    lease.path.write_text(json.dumps({"holder": "node-7:4242 (slurm job 99)", "pid": 4242, "host": "node-7",
                                      "expires": time.time() + 30}))
    with pytest.raises(UserError, match=r"is being written by node-7:4242 \(slurm job 99\) \(lease .* expires in "
                                        r"(29|30) s unless renewed\)"):
        lease.acquire()
    assert held(lease.path)["holder"] == "node-7:4242 (slurm job 99)"  # left as it was


def test_an_expired_lease_is_taken_over(tmp_path: Path) -> None:
    lease = StoreLease(tmp_path / "landscape.zarr", ttl=60)
    lease.path.write_text(json.dumps({"holder": "node-7:4242", "pid": 4242, "host": "node-7",
                                      "expires": time.time() - 1}))  # not renewed for longer than its ttl
    with lease:
        assert held(lease.path)["holder"] == lease.holder
    assert not lease.path.exists()


def test_a_lease_whose_process_is_gone_is_taken_over(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)  # that process has exited
    lease = StoreLease(tmp_path / "landscape.zarr", ttl=60)
    lease.path.write_text(json.dumps({"holder": f"{socket.gethostname()}:{pid}", "pid": pid,
                                      "host": socket.gethostname(), "expires": time.time() + 60}))
    with lease:
        assert held(lease.path)["pid"] == os.getpid()


def test_the_holder_renews_until_released(tmp_path: Path) -> None:
    lease = StoreLease(tmp_path / "landscape.zarr", ttl=0.4)  # renewed every 0.1 s
    with lease:
        first = held(lease.path)["expires"]
        time.sleep(0.6)  # longer than the ttl: without renewal it would have expired
        now = held(lease.path)
        assert now["holder"] == lease.holder and now["expires"] > first and now["expires"] > time.time()
        with pytest.raises(UserError, match="is being written by"):
            StoreLease(lease.store, ttl=0.4).acquire()
        start = time.time()
    assert time.time() - start < 2  # release stops the renewing thread at once (its join would wait 5 s)
    assert not lease.path.exists()
    time.sleep(0.25)
    assert not lease.path.exists()  # renewal stopped with the release: nothing writes the lease back


def test_release_leaves_a_lease_another_job_took(tmp_path: Path) -> None:
    lease = StoreLease(tmp_path / "landscape.zarr", ttl=60)
    lease.acquire()
    lease.path.write_text(json.dumps({"holder": "node-7:1", "pid": 1, "host": "node-7", "expires": time.time() + 60}))
    lease.release()
    assert held(lease.path)["holder"] == "node-7:1"
