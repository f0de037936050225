"""How the command line answers mistakes and faults: one line on stderr and exit status 2 for a
user's error (no traceback), no work lost, no earlier file changed. One test per failure class."""

import errno
import hashlib
import json
import os
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from diffusion_jax import cli, parallel
from diffusion_jax.checkpoint import checkpointer
from diffusion_jax.training import hooks

# The 2-D MLP of the toy2d preset: compiles in seconds.
FAST = (
    "--config.training.batch_size=16", "--config.training.log_every=1",
    "--config.training.checkpoint_every=2", "--config.training.async_checkpoints=False",
)  # fmt: skip


def _train(capsys, workdir, *args, steps=4):
    argv = ["train", "--config", "toy2d", "--workdir", str(workdir), *FAST]
    rc = cli.main([*argv, f"--config.training.num_steps={steps}", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str, command: str = "train") -> str:
    """The error line of a user error: one line, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"diffusion-jax {command}:")]
    assert len(lines) == 1, err
    return lines[0]


def _snapshot(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy2d run of 4 steps (checkpoints 2 and 4), to resume and sample from."""
    workdir = tmp_path_factory.mktemp("run")
    argv = ["train", "--config", "toy2d", "--workdir", str(workdir), *FAST]
    assert cli.main([*argv, "--config.training.num_steps=4"]) == 0
    return workdir


def test_a_bad_config_value_is_one_line_naming_the_key_before_anything_is_written(tmp_path, capsys):
    rc, _, err = _train(capsys, tmp_path / "w", "--config.training.log_every=0")
    line = _one_line_error(err)
    assert (
        rc == 2 and "training.log_every" in line and line.startswith("diffusion-jax train: error")
    )
    assert not (tmp_path / "w").exists()
    rc, _, err = _train(capsys, tmp_path / "w", "--config.diffusion.beta_schedule=cosin")
    assert rc == 2 and "did you mean 'cosine'" in _one_line_error(err).lower()
    rc, _, err = _train(capsys, tmp_path / "w", steps=0)
    assert rc == 2 and "training.num_steps" in _one_line_error(err)


def test_debug_shows_the_traceback_and_a_bug_keeps_it(tmp_path, monkeypatch):
    argv = [
        "train",
        "--config",
        "toy2d",
        "--workdir",
        str(tmp_path),
        "--config.training.log_every=0",
    ]
    with pytest.raises(ValueError, match="training.log_every"):
        cli.main([*argv, "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="training.log_every"):
        cli.main(argv)
    monkeypatch.delenv(cli.DEBUG_ENV)

    def bug(argv):
        raise KeyError("not the user's")

    import diffusion_jax.cli.info as info

    monkeypatch.setattr(info, "main", bug)
    with pytest.raises(KeyError):
        cli.main(["info"])


def test_a_missing_path_is_one_line(tmp_path, capsys):
    assert cli.main(["sample", "--workdir", str(tmp_path / "nothing"), "--num", "2"]) == 2
    assert "no checkpoint" in _one_line_error(capsys.readouterr().err, "sample").lower()
    rc, _, err = (
        cli.main(["train", "--config", str(tmp_path / "no.py"), "--workdir", "w"]),
        *(capsys.readouterr()),
    )
    assert rc == 2 and "no.py" in _one_line_error(err)


def test_a_second_train_on_a_workdir_in_use_is_refused_naming_the_holder(trained, capsys):
    before = _snapshot(trained)
    now = datetime.now(UTC).isoformat()
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "command": "train",
              "started": now, "heartbeat": now, "token": "another run"}  # fmt: skip
    (trained / "lock.1.json").write_text(json.dumps(holder))
    try:
        rc, _, err = _train(capsys, trained, steps=6)
    finally:
        (trained / "lock.1.json").unlink()
    line = _one_line_error(err)
    assert rc == 2 and f"pid {os.getppid()}" in line and socket.gethostname() in line
    assert _snapshot(trained) == before


def test_ctrl_c_saves_a_checkpoint_like_sigterm(tmp_path, capsys, monkeypatch):
    real, calls = parallel.global_batch, []

    def interrupted(mesh, batch):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # handled between bytecodes: during step 3
        return real(mesh, batch)

    monkeypatch.setattr(parallel, "global_batch", interrupted)
    rc, out, err = _train(capsys, tmp_path, steps=10)
    assert rc == 0 and "Ctrl-C" in err and "Traceback" not in err
    assert _steps(tmp_path) == [2, 3]  # step 3's work kept, though 3 is not a checkpoint step
    assert "stopped by Ctrl-C, checkpoint saved at step 3 of 10" in out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_a_failing_hook_costs_no_checkpoint(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "samples"))

    monkeypatch.setattr(hooks, "sample_grid", full)
    rc, out, err = _train(capsys, tmp_path, "--config.training.sample_every=3", steps=6)
    line = _one_line_error(err)
    assert rc == 2 and "no space left" in line and str(tmp_path / "samples") in line
    assert _steps(tmp_path) == [2, 3]  # step 3 saved before its hook ran
    assert "last checkpoint: step 3" in out


def test_skipped_steps_stop_the_run_after_the_limit(tmp_path, capsys, monkeypatch, caplog):
    real, calls = parallel.global_batch, []

    def poisoned(mesh, batch):
        calls.append(1)
        if len(calls) >= 3:
            batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
        return real(mesh, batch)

    monkeypatch.setattr(parallel, "global_batch", poisoned)
    skip = ("--config.training.on_nonfinite=skip", "--config.training.max_consecutive_skips=3")
    rc, out, err = _train(capsys, tmp_path, *skip, steps=20)
    line = _one_line_error(err)
    assert rc == 2 and "3 steps in a row, up to step 5" in line and "diverged" in line
    assert _steps(tmp_path) == [2, 4]  # skipped updates leave the parameters as they were
    assert "3 skipped in all" in out and "last checkpoint: step 4" in out
    warned = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert warned == [
        f"1 update(s) skipped for a non-finite loss or gradient (steps {s})." for s in (3, 4)
    ]  # step 5 raised the error instead


def test_sample_checks_its_output_first_and_never_overwrites_silently(trained, capsys):
    out = trained / "s.npz"
    args = ["sample", "--workdir", str(trained), "--num", "4", "--steps", "5", "--out", str(out)]
    assert cli.main([*args, "--step", "2"]) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert cli.main(args) == 2
    line = _one_line_error(capsys.readouterr().err, "sample")
    assert "--overwrite" in line and out.read_bytes() == first
    assert cli.main([*args, "--overwrite"]) == 0  # the latest step (4): other samples
    assert out.read_bytes() != first
    for bad in (["--num", "0"], ["--out", str(trained / "x.png")], ["--step", "3"]):
        assert cli.main([*args, "--overwrite", *bad]) == 2, bad
        _one_line_error(capsys.readouterr().err, "sample")


def test_a_full_disk_is_one_line_and_keeps_the_earlier_checkpoints(tmp_path, capsys, monkeypatch):
    assert _train(capsys, tmp_path, steps=2)[0] == 0
    before = _snapshot(tmp_path / "checkpoints")

    class Usage:
        free = 1000  # bytes: less than the state

    monkeypatch.setattr(checkpointer.shutil, "disk_usage", lambda path: Usage)
    rc, _, err = _train(capsys, tmp_path, steps=4)
    line = _one_line_error(err)
    assert rc == 2 and "Could not save step 4" in line and "0.0 MiB free" in line
    assert _snapshot(tmp_path / "checkpoints") == before
    monkeypatch.undo()

    def no_space(*args, **kwargs):  # as orbax reports a write that fails midway
        raise RuntimeError("save failed") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointer.ocp.CheckpointManager, "save", no_space)
    rc, _, err = _train(capsys, tmp_path, steps=4)
    line = _one_line_error(err)
    assert rc == 2 and "No space left on device" in line and "[2]" in line
    assert _snapshot(tmp_path / "checkpoints") == before


def test_resuming_with_changed_data_or_batch_is_refused_unless_allowed(trained, capsys, tmp_path):
    before = _snapshot(trained)
    rc, _, err = _train(capsys, trained, "--config.training.batch_size=32", steps=6)
    line = _one_line_error(err)
    assert rc == 2 and "training.batch_size: checkpoint 16, config 32" in line
    assert "--allow_config_change" in line and _snapshot(trained) == before
    rc, _, err = _train(capsys, trained, "--config.model.mlp_hidden=64", steps=6)
    assert rc == 2 and "model.mlp_hidden" in _one_line_error(err)

    rc, out, _ = _train(capsys, trained, "--config.training.num_steps=4", steps=4)
    assert rc == 0 and "nothing to do" in out  # already at num_steps

    workdir = tmp_path / "copy"
    cli.main(["train", "--config", "toy2d", "--workdir", str(workdir), *FAST,
              "--config.training.num_steps=2"])  # fmt: skip
    argv = ("--config.training.batch_size=32", "--config.optim.learning_rate=0.001")
    rc, out, _ = _train(capsys, workdir, *argv, "--allow_config_change", steps=4)
    assert rc == 0 and _steps(workdir) == [2, 4]
    history = [json.loads(line) for line in (workdir / "config_history.jsonl").open()]
    assert history == [
        {
            "step": 2,
            "time": history[0]["time"],
            "changes": {
                "optim.learning_rate": {"from": 0.002, "to": 0.001},
                "training.batch_size": {"from": 16, "to": 32},
                "training.num_steps": {"from": 2, "to": 4},
            },
        }
    ]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_lists_every_flag(command, capsys, monkeypatch):
    parsers = []
    real = cli.flags.Parser.parse_args

    def spy(self, *args, **kwargs):
        parsers.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cli.flags.Parser, "parse_args", spy)
    try:
        assert cli.main([command, "--help"]) == 0
    except SystemExit as e:  # argparse's --help
        assert e.code == 0
    text = capsys.readouterr().out
    if command.startswith("train"):
        from diffusion_jax import configs

        preset = "digits_classifier" if command == "train-classifier" else "digits"
        keys = list(configs.flatten_keys(configs.get_config(preset)))
        missing = [k for k in keys if f"--config.{k}=" not in text]
        assert not missing and "--allow_config_change" in text and "--debug" in text, missing
        return
    assert parsers, f"{command} --help did not go through flags.Parser"
    options = [s for a in parsers[0]._actions for s in a.option_strings if s.startswith("--")]
    assert options and [o for o in options if o not in text] == []
