"""The workdir lock: created and removed with its holder's record, refused while a live process
holds it, taken over (with a warning naming the old holder) when that process is gone, its
heartbeat is old or the file is malformed, by exactly one of several racers; the heartbeat thread;
the multi-host outcome shared from process 0. No JAX compilation: the broadcast is faked."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jax
import pytest

from diffusion_jax.errors import UserError
from diffusion_jax.training import lock as lock_module
from diffusion_jax.training.lock import WorkdirLock, WorkdirLockedError

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import os, sys, time
from diffusion_jax.training.lock import WorkdirLock
WorkdirLock(sys.argv[1], command="holder").acquire()
if sys.argv[2] == "exit":
    os._exit(0)  # dies holding the lock
time.sleep(600)
"""


def _holder(workdir: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir), mode], cwd=ROOT)


def _wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _files(workdir: Path) -> list[str]:
    return sorted(os.listdir(workdir))


def _record(workdir: Path) -> dict:
    """The one lock file's record."""
    (path,) = workdir.glob("lock.*.json")
    return json.loads(path.read_text())


def _write_record(workdir: Path, *, host: str, pid: int, heartbeat_age_s: float, generation=1):
    now = datetime.now(UTC)
    record = {"host": host, "pid": pid, "command": "train",
              "started": (now - timedelta(hours=2)).isoformat(),
              "heartbeat": (now - timedelta(seconds=heartbeat_age_s)).isoformat(),
              "token": f"{generation:032x}"}  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"lock.{generation}.json").write_text(json.dumps(record))
    return record


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
    workdir = tmp_path / "run"  # created by the lock
    before = datetime.now(UTC)
    with WorkdirLock(workdir, command="sample") as lock:
        record = _record(workdir)
        assert _files(workdir) == ["lock.1.json"]  # no temporary file left behind
        assert lock.path == workdir / "lock.1.json"
    assert _files(workdir) == [] and lock.path is None
    assert set(record) == {"host", "pid", "command", "started", "heartbeat", "token"}
    assert (record["host"], record["pid"], record["command"]) == (
        socket.gethostname(), os.getpid(), "sample")  # fmt: skip
    started = datetime.fromisoformat(record["started"])
    assert started.utcoffset() == timedelta(0)
    assert before <= started <= datetime.now(UTC)
    assert record["heartbeat"] == record["started"]

    lock.acquire()  # acquire/release without `with`, and again on the same object
    assert _record(workdir)["token"] != record["token"]
    lock.release()
    assert _files(workdir) == []


def test_a_live_holder_is_refused(tmp_path):
    proc = _holder(tmp_path, "sleep")
    try:
        _wait_for(lambda: _files(tmp_path) == ["lock.1.json"])
        held = (tmp_path / "lock.1.json").read_bytes()
        with pytest.raises(WorkdirLockedError) as refused:
            WorkdirLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    message = str(refused.value)
    assert isinstance(refused.value, UserError) and "\n" not in message
    expected = [
        *(str(tmp_path), f"pid {proc.pid}", f"host {socket.gethostname()}", "`holder`"),
        *("last heartbeat 0 s ago", "another --workdir", f"delete {tmp_path}/lock.1.json"),
    ]
    for part in expected:
        assert part in message, (part, message)
    assert _files(tmp_path) == ["lock.1.json"]  # left alone, and nothing else written
    assert (tmp_path / "lock.1.json").read_bytes() == held


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "exit"], cwd=ROOT, check=True)
    old = _record(tmp_path)
    with caplog.at_level(logging.WARNING), WorkdirLock(tmp_path):
        assert _files(tmp_path) == ["lock.2.json"]  # the next generation; the stale one removed
        assert _record(tmp_path)["pid"] == os.getpid()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"pid {old['pid']} on host {old['host']}" in warning
    assert f"process {old['pid']} is not running" in warning


@pytest.mark.parametrize("host", ["elsewhere", socket.gethostname()])
def test_an_old_heartbeat_is_taken_over_on_any_host(tmp_path, caplog, host):
    # pid: our own, alive on this host, so only the heartbeat can make the lock stale
    old = _write_record(tmp_path, host=host, pid=os.getpid(), heartbeat_age_s=400)
    with caplog.at_level(logging.WARNING), WorkdirLock(tmp_path, stale_after_s=300):
        assert _record(tmp_path)["token"] != old["token"]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"pid {old['pid']} on host {host}" in warning and "no heartbeat for 400 s" in warning


def test_a_fresh_heartbeat_of_another_host_is_refused(tmp_path):
    # the pid is not running here, but it is another host's pid: only the heartbeat counts
    old = _write_record(tmp_path, host="elsewhere", pid=_dead_pid(), heartbeat_age_s=200)
    with pytest.raises(WorkdirLockedError, match=f"pid {old['pid']} on host elsewhere.*200 s ago"):
        WorkdirLock(tmp_path, stale_after_s=300).acquire()
    assert _record(tmp_path) == old and _files(tmp_path) == ["lock.1.json"]


@pytest.mark.parametrize(
    "content",
    [b"", b'{"host": "node', b"[]", b'{"host": "x", "pid": 1}',
     json.dumps({"host": "x", "pid": 1, "command": "train", "started": "yesterday",
                 "heartbeat": "now", "token": "t"}).encode()],
    ids=["empty", "cut", "list", "fields", "dates"],
)  # fmt: skip
def test_a_malformed_lock_file_is_taken_over(tmp_path, caplog, content):
    (tmp_path / "lock.1.json").write_bytes(content)
    with caplog.at_level(logging.WARNING), WorkdirLock(tmp_path):
        assert _record(tmp_path)["pid"] == os.getpid()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "malformed lock file" in warning


@pytest.fixture
def fine_thread_switching():
    """Interleaves threads as finely as the interpreter allows."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def _race(locks: list[WorkdirLock]) -> list[str]:
    outcomes, barrier = [], threading.Barrier(len(locks))

    def race(lock):
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append("won")
        except WorkdirLockedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=race, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(outcomes)


@pytest.mark.parametrize("stale", [True, False], ids=["stale lock", "no lock"])
def test_exactly_one_of_several_racers_wins(tmp_path, fine_thread_switching, stale):
    """Threads of one process: each sees the others' locks as alive (same host and pid)."""
    for _ in range(10):
        if stale:
            _write_record(tmp_path, host="elsewhere", pid=1, heartbeat_age_s=1000)
        locks = [WorkdirLock(tmp_path) for _ in range(8)]
        assert _race(locks) == ["refused"] * 7 + ["won"]
        (winner,) = [lock for lock in locks if lock.path is not None]
        assert _record(tmp_path)["token"] == winner._record["token"]
        assert _files(tmp_path) == [winner.path.name]  # no other lock or temporary file
        winner.release()


@pytest.mark.parametrize("meanwhile", ["judged lock replaced", "higher generation"])
def test_a_racer_whose_view_went_out_of_date_backs_off(tmp_path, monkeypatch, meanwhile):
    """Between judging lock.1.json stale and creating lock.2.json, another process changed the
    picture: our lock.2.json must not count, and the live lock refuses us."""
    _write_record(tmp_path, host="elsewhere", pid=1, heartbeat_age_s=1000)
    create = lock_module._create

    def create_then_interfere(path, data):
        created = create(path, data)
        generation = 1 if meanwhile == "judged lock replaced" else 3
        _write_record(tmp_path, host="other", pid=7, heartbeat_age_s=0, generation=generation)
        return created

    monkeypatch.setattr(lock_module, "_create", create_then_interfere)
    with pytest.raises(WorkdirLockedError, match="pid 7 on host other"):
        WorkdirLock(tmp_path).acquire()
    assert "lock.2.json" not in _files(tmp_path)


def test_the_heartbeat_thread_refreshes_the_heartbeat(tmp_path):
    with WorkdirLock(tmp_path, heartbeat_s=0.02, stale_after_s=10) as lock:
        first = _record(tmp_path)
        beat = lambda: datetime.fromisoformat(_record(tmp_path)["heartbeat"])  # noqa: E731
        _wait_for(lambda: beat() > datetime.fromisoformat(first["heartbeat"]), timeout_s=10)
        later = _record(tmp_path)
        thread = lock._thread
        assert thread.daemon and thread.is_alive()
        assert {k: v for k, v in later.items() if k != "heartbeat"} == {
            k: v for k, v in first.items() if k != "heartbeat"}  # fmt: skip
    assert not thread.is_alive()


@pytest.mark.parametrize("generation", [1, 2], ids=["overwritten", "superseded"])
def test_a_lock_that_is_no_longer_ours_is_left_alone(tmp_path, caplog, generation):
    lock = WorkdirLock(tmp_path, heartbeat_s=0.02, stale_after_s=10).acquire()
    _write_record(tmp_path, host="elsewhere", pid=1, heartbeat_age_s=0, generation=generation)
    other_bytes = (tmp_path / f"lock.{generation}.json").read_bytes()
    with caplog.at_level(logging.WARNING):
        _wait_for(lambda: not lock._thread.is_alive(), timeout_s=10)  # stops: lost the lock
        lock.release()
    assert (tmp_path / f"lock.{generation}.json").read_bytes() == other_bytes  # not rewritten
    assert _files(tmp_path) == [f"lock.{generation}.json"]  # ours removed, if still ours
    assert "Lost the lock" in caplog.text
    assert ("no longer holds this process's lock" in caplog.text) == (generation == 1)


def test_intervals_are_checked():
    with pytest.raises(ValueError, match="heartbeat_s < stale_after_s"):
        WorkdirLock("unused", heartbeat_s=30, stale_after_s=30)


def test_one_process_makes_no_collective_call(tmp_path, monkeypatch):
    def collective(_):
        raise AssertionError("a collective with one process")

    monkeypatch.setattr(lock_module.multihost_utils, "broadcast_one_to_all", collective)
    with WorkdirLock(tmp_path):
        assert _files(tmp_path) == ["lock.1.json"]


def test_several_processes_share_process_0s_outcome(tmp_path, monkeypatch):
    """Process 0 takes the lock and broadcasts the outcome; the others only read it."""
    sent = []

    def broadcast(buffer):  # what process 0 sends is what every process gets
        sent.append(buffer.copy())
        return buffer

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(lock_module.multihost_utils, "broadcast_one_to_all", broadcast)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    with WorkdirLock(tmp_path):  # process 0: taken, "ok" broadcast
        ok = sent[-1]
        with pytest.raises(WorkdirLockedError) as refused:  # process 0 of a second run
            WorkdirLock(tmp_path).acquire()
        locked = sent[-1]
    assert len(sent) == 2 and f"pid {os.getpid()}" in str(refused.value)

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    other = tmp_path / "other"  # process 1 never touches the workdir
    monkeypatch.setattr(lock_module.multihost_utils, "broadcast_one_to_all", lambda _: ok)
    with WorkdirLock(other):
        assert not other.exists()
    monkeypatch.setattr(lock_module.multihost_utils, "broadcast_one_to_all", lambda _: locked)
    with pytest.raises(WorkdirLockedError) as also_refused:
        WorkdirLock(other).acquire()
    assert str(also_refused.value) == str(refused.value)

    # any other failure of process 0 (here: the workdir is a file) stops every process too
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    monkeypatch.setattr(lock_module.multihost_utils, "broadcast_one_to_all", broadcast)
    (tmp_path / "a_file").touch()
    with pytest.raises(FileExistsError):
        WorkdirLock(tmp_path / "a_file").acquire()
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    failed = sent[-1]
    monkeypatch.setattr(lock_module.multihost_utils, "broadcast_one_to_all", lambda _: failed)
    with pytest.raises(RuntimeError, match=f"lock on {other}: .*File exists: .*a_file"):
        WorkdirLock(other).acquire()
