import subprocess
import sys

import pytest

from diffusion_jax import cli


def test_help_lists_the_subcommands(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "usage: diffusion-jax" in out and "info" in out


def test_info_counts_the_cifar10_unet(capsys):
    assert cli.main(["info", "--presets", "cifar10"]) == 0
    assert "35,746,307 parameters" in capsys.readouterr().out


def test_module_entry_point_runs_in_a_fresh_process():
    proc = subprocess.run(
        [sys.executable, "-m", "diffusion_jax", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip().startswith("diffusion_jax ")


def test_a_missing_config_file_is_a_usage_error(tmp_path):
    for argv in (["--config", "experiments/configs/nope.py"], ["--config=nope.py"]):
        with pytest.raises(cli.UsageError, match="no such file"):
            cli.parse_train_flags([*argv, "--workdir", str(tmp_path)])
