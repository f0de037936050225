import subprocess
import sys

import pytest

from diffusion_jax import cli, configs


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


def test_every_command_has_a_module_with_main():
    import importlib

    for command in cli.COMMANDS:
        module = importlib.import_module(f"diffusion_jax.cli.{command.replace('-', '_')}")
        assert callable(module.main), command


def test_info_imports_no_training_code():
    code = (
        "import sys; from diffusion_jax import cli; assert cli.main(['info', '--presets']) == 0; "
        "bad = [m for m in sys.modules if m.startswith(('diffusion_jax.training', "
        "'diffusion_jax.cli.train'))]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_a_missing_config_file_is_a_usage_error(tmp_path):
    for argv in (["--config", "experiments/configs/nope.py"], ["--config=nope.py"]):
        with pytest.raises(cli.flags.UsageError, match="neither a preset nor a config file"):
            cli.flags.parse_train_flags([*argv, "--workdir", str(tmp_path)])


@pytest.mark.parametrize("command", ["train", "train-classifier"])
def test_train_help_lists_config_presets_and_flags(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"diffusion-jax {command}" in out
    for text in ("--config", "digits", "--workdir", "--config.KEY=VALUE", "--num_processes"):
        assert text in out, text


def test_an_unknown_preset_names_the_presets(tmp_path):
    for argv in (["--config", "nosuchpreset"], ["--config=digitz"]):
        with pytest.raises(cli.flags.UsageError) as raised:
            cli.flags.parse_train_flags([*argv, "--workdir", str(tmp_path)])
        message = str(raised.value)
        assert all(name in message for name in configs.PRESETS), message
    assert "Did you mean 'digits'" in message


def test_a_preset_name_resolves_and_typos_name_the_nearest_key(tmp_path):
    for argv in (["--config", "digits"], ["--config=digits"]):
        config, workdir = cli.flags.parse_train_flags([*argv, "--workdir", str(tmp_path)])
        assert config.data.dataset == "digits" and workdir == str(tmp_path)
    config, _ = cli.flags.parse_train_flags(
        ["--config", "digits", "--workdir", str(tmp_path), "--config.training.batch_size=3"]
    )
    assert config.training.batch_size == 3
    with pytest.raises(cli.flags.UsageError, match=r"config\.training\.batch_size\b"):
        cli.flags.parse_train_flags(
            ["--config", "digits", "--workdir", str(tmp_path), "--config.training.batch_sizee=3"]
        )


def test_a_config_file_path_still_works(tmp_path):
    path = str(configs.config_file("tiny"))
    config, _ = cli.flags.parse_train_flags(["--config", path, "--workdir", str(tmp_path)])
    assert config.to_dict() == configs.get_config("tiny").to_dict()


def test_train_without_workdir_is_a_usage_error(capsys):
    assert cli.main(["train", "--config", "digits"]) == 2
    assert "--workdir DIR" in capsys.readouterr().err


def test_ref_stats_rejects_an_unknown_preset(capsys):
    assert cli.main(["ref-stats", "--config", "nosuchpreset", "--out", "x.npz"]) == 2
    assert "neither a preset" in capsys.readouterr().err
