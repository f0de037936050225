"""How busy the rest of the machine was while we measured (Linux; no JAX import).

    with cpuload.Others() as others:
        ...                                   # the timed calls
    others.cores                              # CPU cores used by other processes meanwhile

    cpuload.wait_until_quiet(max_cores=0.3, timeout_s=300)   # before a measurement

The busy time of all CPUs (/proc/stat) minus this process's own CPU time (every thread), per
second of wall time. 0 means the machine was ours; 1 means another process kept one core busy.
"""

from __future__ import annotations

import os
import time


def _stat() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of all CPUs since boot: busy excludes idle, iowait and steal."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    steal = fields[7] if len(fields) > 7 else 0.0  # time the hypervisor gave to other guests
    busy = sum(fields[:8]) - fields[3] - (fields[4] if len(fields) > 4 else 0.0) - steal
    return busy / os.sysconf("SC_CLK_TCK"), steal / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


class Others:
    """Context manager: `.cores` = CPU cores other processes used during the block; `.steal` =
    cores the hypervisor gave to other virtual machines (0 on bare metal)."""

    def __enter__(self):
        self.cores = self.steal = None
        self._start = (time.perf_counter(), _stat(), _own_s())
        return self

    def __exit__(self, *exc):
        wall0, stat0, own0 = self._start
        wall, stat = time.perf_counter() - wall0, _stat()
        if stat0 is not None and stat is not None and wall > 0:
            busy = (stat[0] - stat0[0]) - (_own_s() - own0)
            self.cores = round(max(0.0, busy) / wall, 3)
            self.steal = round((stat[1] - stat0[1]) / wall, 3)
        return False


def others_now(window_s: float = 2.0) -> float | None:
    with Others() as others:
        time.sleep(window_s)
    return others.cores


def wait_until_quiet(max_cores: float = 0.3, timeout_s: float = 0.0, window_s: float = 2.0):
    """Sleeps until other processes use at most `max_cores` cores (over `window_s`), for at most
    `timeout_s` seconds; returns (the last reading, seconds waited)."""
    start = time.perf_counter()
    reading = others_now(window_s)
    while reading is not None and reading > max_cores and time.perf_counter() - start < timeout_s:
        reading = others_now(window_s)
    return reading, round(time.perf_counter() - start, 1)
