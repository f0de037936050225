"""Runs one command as N JAX processes on this machine: a local multi-process run.

    python experiments/launch/local.py --num_processes 2 --devices_per_process 4 -- \
        diffusion-jax train --config tiny --workdir runs/tiny_2x4

Each process gets `--coordinator_address 127.0.0.1:PORT --num_processes N --process_id I`
appended to the command (PORT: a free loopback port, or --port), and with --devices_per_process
it runs on that many virtual CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count,
JAX_PLATFORMS=cpu; cross-process collectives through gloo). Without it, each process sees the
machine's accelerators; pass --local_device_ids-style isolation through your own environment
(e.g. CUDA_VISIBLE_DEVICES per process) if you split GPUs between processes.

The output of process i goes to the terminal prefixed with [i] (or to --log_dir/process_i.log).
If a process fails, the others get --grace seconds to fail on their own (JAX stops them within
their --heartbeat_timeout) and are then terminated; the exit status is the first non-zero one.
This is the multi-host run of a TPU pod or a SLURM job, with the hosts replaced by processes:
the command, the checkpoints and the global batch are the same (see experiments/launch/README.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port that is free on the loopback interface now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, port: int, devices_per_process: int) -> dict:
    env = dict(base)
    # Process 0's coordination service listens on loopback only (JAX's default is every interface).
    env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"
    if devices_per_process:
        env["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def process_command(command: list[str], port: int, num: int, index: int) -> list[str]:
    return [
        *command,
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={num}",
        f"--process_id={index}",
    ]


def _pump(stream, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def launch(
    command: list[str],
    *,
    num_processes: int,
    devices_per_process: int = 0,
    port: int = 0,
    log_dir: str = "",
    grace: float = 60.0,
    timeout: float | None = None,
    env: dict | None = None,
) -> int:
    """Starts the processes, waits for them and returns the first non-zero exit status (0 if
    all succeed; 124 if they are still running after `timeout` seconds). Every process is
    terminated (SIGTERM, then SIGKILL) before this returns."""
    port = port or free_port()
    start = time.monotonic()
    base = dict(os.environ if env is None else env)
    procs, logs, pumps = [], [], []
    try:
        for i in range(num_processes):
            kw = {}
            if log_dir:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                logs.append(open(Path(log_dir) / f"process_{i}.log", "w"))  # noqa: SIM115
                kw = dict(stdout=logs[-1], stderr=subprocess.STDOUT)
            else:
                kw = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            procs.append(
                subprocess.Popen(
                    process_command(command, port, num_processes, i),
                    env=process_env(base, port, devices_per_process),
                    **kw,
                )
            )
            if not log_dir:
                pumps.append(threading.Thread(target=_pump, args=(procs[-1].stdout, f"[{i}] ")))
                pumps[-1].start()
        status, failed_at = 0, None
        while any(p.poll() is None for p in procs):
            for p in procs:
                if p.returncode not in (None, 0) and status == 0:
                    status, failed_at = p.returncode, time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                status = status or 124
                break
            time.sleep(0.2)
        for p in procs:
            if p.returncode not in (None, 0) and status == 0:
                status = p.returncode
        return status if status >= 0 else 128 - status
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in pumps:
            t.join(timeout=5)
        for f in logs:
            f.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print(__doc__)
        print("error: give the command after --", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(description="Run a command as N local JAX processes.")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=0, help="virtual CPU devices")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--log_dir", default="", help="write process_i.log files here")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds before stragglers die")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before all die")
    args = parser.parse_args(argv[:split])
    return launch(
        argv[split + 1 :],
        num_processes=args.num_processes,
        devices_per_process=args.devices_per_process,
        port=args.port,
        log_dir=args.log_dir,
        grace=args.grace,
        timeout=args.timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
