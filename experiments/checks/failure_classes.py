"""How the command line answers a user's mistakes and faults, one case per failure class, as a
Markdown table: exit status, whether a traceback was printed, how many lines stderr had, and
whether the earlier files of the workdir survived. Run it against any checkout to compare:

    python experiments/checks/failure_classes.py --root .              # this checkout
    python experiments/checks/failure_classes.py --root /tmp/old-main  # another one

Each case runs `python -m diffusion_jax` in a fresh process (toy2d: an MLP, seconds per run).
The full-disk case mounts a 4 MiB tmpfs and needs root; it is skipped otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAST = [
    "--config", "toy2d", "--config.training.batch_size=16", "--config.training.log_every=1",
    "--config.training.checkpoint_every=2", "--config.training.async_checkpoints=False",
]  # fmt: skip


class Runner:
    def __init__(self, root: Path, scratch: Path):
        self.root, self.scratch = root, scratch
        self.env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "diffusion_jax", *args], cwd=self.root, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def run(self, *args: str, timeout: int = 300) -> tuple[int, str, str]:
        proc = self.start(*args)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def train(self, workdir: Path, steps: int, *extra: str) -> tuple[int, str, str]:
        return self.run("train", "--workdir", str(workdir), *FAST,
                        f"--config.training.num_steps={steps}", *extra)  # fmt: skip


def snapshot(directory: Path) -> dict:
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.rglob("*")
        if p.is_file() and "checkpoints" in p.parts
    }


def row(name, rc, err, kept="", note=""):
    lines = len([line for line in err.splitlines() if line.strip() and "%|" not in line])
    tb = "yes" if "Traceback" in err else "no"
    return f"| {name} | {rc} | {tb} | {lines} | {kept} | {note} |"


def _wait_for(path: Path, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists() and time.time() < end:
        time.sleep(0.5)


def cases(r: Runner):
    s = r.scratch
    for name, extra in [
        ("config value: training.log_every=0", ["--config.training.log_every=0"]),
        ("config value: num_steps=0", ["--config.training.num_steps=0"]),
        ("config value: checkpoint_every=0", ["--config.training.checkpoint_every=0"]),
        ("config value: sample_respacing=10O", ["--config.training.sample_every=2",
                                                "--config.training.sample_respacing=10O"]),
        ("config value: beta_schedule=cosin", ["--config.diffusion.beta_schedule=cosin"]),
    ]:  # fmt: skip
        w = s / name.split(":")[1].strip().split("=")[0]
        rc, out, err = r.train(w, 4, *extra)
        yield row(name, rc, err, note=f"checkpoints written: {sorted(snapshot(w)) != []}")

    rc, _, err = r.run("train", "--config", str(s / "nope.py"), "--workdir", str(s / "p"))
    yield row("path: missing config file", rc, err)
    rc, _, err = r.run("sample", "--workdir", str(s / "nothing"), "--num", "2")
    yield row("path: sample from a missing run", rc, err)
    rc, out, err = r.run("train", "--help")
    yield row("train --help", rc, err, note=f"keys listed: {'--config.training.log_every=' in out}")

    run = s / "run"
    r.train(run, 4)
    before = snapshot(run)
    rc, _, err = r.train(run, 8, "--config.training.batch_size=32")
    yield row("resume with another batch size", rc, err, before == snapshot(run))
    rc, out, err = r.train(run, 4)
    yield row("resume a finished run", rc, err, note=f"says so: {'nothing to do' in out}")

    npz = s / "samples.npz"
    r.run("sample", "--workdir", str(run), "--num", "4", "--steps", "5", "--out", str(npz))
    first = npz.read_bytes() if npz.exists() else b""
    rc, _, err = r.run("sample", "--workdir", str(run), "--num", "4", "--steps", "5",
                       "--seed", "1", "--out", str(npz))  # fmt: skip
    yield row("sample over earlier samples", rc, err, npz.read_bytes() == first)
    rc, _, err = r.run("sample", "--workdir", str(run), "--num", "0", "--out", str(s / "z.npz"))
    yield row("sample --num 0", rc, err)
    rc, _, err = r.run("sample", "--workdir", str(run), "--num", "4", "--out", "/proc/x.npz")
    yield row("sample to an unwritable path", rc, err)

    yield from _concurrent_and_ctrl_c(r, s)
    yield from _full_disk(r, s)


def _concurrent_and_ctrl_c(r: Runner, s: Path):
    busy = s / "busy"
    first = r.start("train", "--workdir", str(busy), *FAST, "--config.training.num_steps=100000")
    _wait_for(busy / "metrics.jsonl")
    before = snapshot(busy)
    rc, _, err = r.train(busy, 6)
    alive = first.poll() is None
    yield row("second train on a workdir in use", rc, err, note=f"first still alive: {alive}")
    first.send_signal(signal.SIGINT)
    try:
        _, err = first.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        first.kill()
        _, err = first.communicate()
    steps = sorted(snapshot(busy).keys() - before.keys())
    saved = sorted({p.split("/")[1] for p in steps if p.startswith("checkpoints/")})
    yield row("Ctrl-C during training", first.returncode, err, note=f"new checkpoints: {saved}")


def _full_disk(r: Runner, s: Path):
    mount = s / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                      capture_output=True).returncode:  # fmt: skip
        yield "| full disk | (skipped: mounting a tmpfs needs root) | | | | |"
        return
    try:
        rc, _, err = r.run("train", "--config", "tiny", "--workdir", str(mount / "w"),
                           "--config.training.num_steps=2")  # fmt: skip
        yield row("full disk (4 MiB tmpfs, tiny U-Net)", rc, err)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2]))
    args = parser.parse_args()
    print("| case | exit | traceback | stderr lines | earlier files kept | note |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        for line in cases(Runner(Path(args.root).resolve(), Path(scratch))):
            print(line, flush=True)


if __name__ == "__main__":
    main()
