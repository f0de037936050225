"""The paper-reproduction scripts in experiments/paper/ use only commands and flags the CLI has.

Every `diffusion-jax SUBCOMMAND ...` command of every script (line continuations joined, shell
variables expanded from the script's own defaults, once per value of each enclosing `for` loop)
goes through the CLI's own parser without running: argparse subcommands through their
`ArgumentParser`, stopped right after parsing; `train` through `cli.flags.parse_train_flags`, which
loads the config file and applies the `--config.*` overrides to the locked config. Flags must be
spelled out in full (argparse would accept an abbreviation). The new configs must differ from
cifar10.py only in their intended fields, and every script must pass `bash -n`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
from pathlib import Path

import ml_collections
import pytest

from diffusion_jax import cli, configs
from diffusion_jax.configs import flatten_keys
from diffusion_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "paper"
SCRIPTS = sorted(PAPER.glob("*.sh"))
EXPECTED_SCRIPTS = {
    "cifar10_table1.sh",
    "table2_ablation.sh",
    "lsun_celebahq_256.sh",
    "ddim_steps.sh",
}
# New configs and the fields in which each may differ from cifar10.py.
DERIVED_CONFIGS = {
    "cifar10_vlb_fixed": {"diffusion.loss_type": "kl"},
    "cifar10_vlb_learned": {"diffusion.loss_type": "kl", "diffusion.var_type": "learned"},
}
TRAIN_COMMANDS = {"train", "train-classifier"}
DISTRIBUTED_FLAGS = {
    "--coordinator_address",
    "--num_processes",
    "--process_id",
    "--distributed",
    "--init_timeout",
    "--heartbeat_timeout",
}


# ----------------------------------------------------------------------------- shell parsing

_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$([A-Za-z_]\w*)")
_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_]\w*)=(.*)$")
_FOR = re.compile(r"^for\s+([A-Za-z_]\w*)\s+in\s+(.*?)\s*;\s*do$")
_OPERATOR = re.compile(r"^[;&|<>()]+$")


def expand(text: str, env: dict[str, str]) -> str:
    """`${NAME:-default}`, `${NAME}` and `$NAME` from `env`; an unset name without a default is
    an error (the scripts run under `set -u`)."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return expand(default, env)
        raise KeyError(f"${name} is used before it is set")

    return _VAR.sub(value, text)


def logical_lines(text: str) -> list[tuple[int, bool, str]]:
    """(first line number, is a comment, text) of each logical line: backslash continuations
    joined, a comment's leading '#' removed (so that commented-out commands are checked too)."""
    out: list[tuple[int, bool, str]] = []
    pending: tuple[int, bool, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        comment = stripped.startswith("#")
        body = stripped.lstrip("#").strip() if comment else stripped
        if pending is not None:
            start, was_comment, joined = pending
            body = f"{joined} {body}"
            number, comment = start, was_comment
        if body.endswith("\\"):
            pending = (number, comment, body[:-1].rstrip())
            continue
        pending = None
        out.append((number, comment, body))
    if pending is not None:
        out.append(pending)
    return out


def _words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def script_commands(text: str, name: str = "<script>") -> list[tuple[str, list[str]]]:
    """Every `diffusion-jax ...` command of a script as (where, argv after 'diffusion-jax'), once
    for each combination of values of the `for` loops around it. Assignments are replayed in
    order (each branch of an if/else in turn), starting from an empty environment, so that the
    scripts' own defaults are what gets checked."""
    worlds: list[dict[str, str]] = [{}]
    loops: list[tuple[str, list[str]]] = []
    commands: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, ...]] = set()
    for number, comment, line in logical_lines(text):
        where = f"{name}:{number}"
        if comment:
            if line.startswith("diffusion-jax "):
                for world in worlds:
                    argv = _command_argv(line, world, where)
                    if tuple(argv) not in seen:
                        seen.add(tuple(argv))
                        commands.append((where, argv))
            continue
        loop = _FOR.match(line)
        if loop:
            var = loop.group(1)
            values_by_world = [_words(expand(loop.group(2), w)) for w in worlds]
            values = [v for vs in values_by_world for v in vs]
            assert values, f"{where}: the loop over ${var} has no values"
            pairs = zip(worlds, values_by_world, strict=True)
            worlds = [{**w, var: v} for w, vs in pairs for v in vs]
            loops.append((var, values))
            continue
        if re.match(r"^done\b", line):
            var, values = loops.pop()
            worlds = _dedupe([w for w in worlds if w.get(var) == values[-1]])
            continue
        assign = _ASSIGN.match(line)
        if assign:
            var, raw = assign.groups()
            words = shlex.split(raw, comments=True) if raw.strip() else []
            for world in worlds:
                try:
                    world[var] = expand(words[0], world) if words else ""
                except KeyError as e:
                    raise AssertionError(f"{where}: {e.args[0]}") from None
            continue
        if "diffusion-jax" in line:
            assert line.startswith("diffusion-jax "), (
                f"{where}: put each diffusion-jax command at the start of its own line, so "
                f"that it is checked: {line!r}"
            )
            for world in worlds:
                argv = _command_argv(line, world, where)
                if tuple(argv) not in seen:
                    seen.add(tuple(argv))
                    commands.append((where, argv))
    assert not loops, f"{name}: a for loop is not closed by done"
    return commands


def _dedupe(worlds: list[dict[str, str]]) -> list[dict[str, str]]:
    unique = {tuple(sorted(w.items())): w for w in worlds}
    return list(unique.values())


def _command_argv(line: str, env: dict[str, str], where: str) -> list[str]:
    try:
        words = _words(expand(line, env))
    except KeyError as e:
        raise AssertionError(f"{where}: {e.args[0]}") from None
    argv = []
    for word in words[1:]:
        if _OPERATOR.match(word):  # ||, &&, ;, |, > ...: the command ends here
            break
        argv.append(word)
    return argv


# ----------------------------------------------------------------------------- the CLI's parsers


class _Parsed(Exception):
    """Raised instead of running a command once its parser has accepted the arguments."""

    def __init__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace):
        super().__init__(parser.prog)
        self.parser = parser
        self.namespace = namespace


def _parse_only(parse_args):
    def patched(self, args=None, namespace=None):
        parsed = parse_args(self, args, namespace)
        raise _Parsed(self, parsed)

    return patched


def _flag_names(argv: list[str]) -> list[str]:
    return [word.split("=", 1)[0] for word in argv if word.startswith("--")]


def command_errors(argv: list[str], monkeypatch) -> list[str]:
    """What is wrong with `diffusion-jax *argv`, judged by the CLI's parsers without running it
    ([] when nothing is). Relative paths are relative to the repository root."""
    if not argv:
        return ["no subcommand"]
    command, rest = argv[0], argv[1:]
    if command not in cli.COMMANDS:
        return [f"unknown subcommand {command!r} (the CLI has {sorted(cli.COMMANDS)})"]
    monkeypatch.chdir(ROOT)
    # cli.main may adjust XLA_FLAGS for the CPU backend; undo that when the test ends.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    if command in TRAIN_COMMANDS:
        return _train_errors(rest)
    monkeypatch.setattr(
        argparse.ArgumentParser,
        "parse_args",
        _parse_only(argparse.ArgumentParser.parse_args),
    )
    try:
        cli.main(argv)
    except _Parsed as parsed:
        return _argparse_errors(command, rest, parsed.parser, parsed.namespace)
    except (SystemExit, UserError) as e:
        return [f"the parser refused {' '.join(argv)!r}: {e}"]
    return [f"{command} ran past its parser"]


def _train_errors(rest: list[str]) -> list[str]:
    errors = []
    for flag in _flag_names(rest):
        if flag not in {"--config", "--workdir", *DISTRIBUTED_FLAGS} and not flag.startswith(
            "--config."
        ):
            errors.append(f"train has no flag {flag}")
    try:
        config, workdir = cli.flags.parse_train_flags(rest)
    except (SystemExit, UserError) as e:
        return [*errors, f"train's flags were refused: {e}"]
    if not workdir:
        errors.append("train needs --workdir")
    # A config file that fails to load is not refused by the flag parser: ml_collections hands
    # back a placeholder that raises on first use, so check that a real config came back.
    if not isinstance(config, ml_collections.ConfigDict):
        errors.append(f"train's --config did not load: {_config_arg(rest)!r}")
    return errors


def _config_arg(argv: list[str]) -> str | None:
    for i, word in enumerate(argv):
        if word == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--config="):
            return word.split("=", 1)[1]
    return None


def _argparse_errors(command, rest, parser, ns) -> list[str]:
    errors = []
    known = set(parser._option_string_actions)
    for flag in _flag_names(rest):
        if flag not in known:
            errors.append(f"{command} has no flag {flag} (an abbreviation is not accepted here)")
    if command == "evaluate":
        wants_samples = bool(ns.samples or ns.num)
        if not (wants_samples or ns.bpd):
            errors.append("evaluate needs --samples, --num or --bpd")
        if (ns.bpd or (ns.num and not ns.samples) or ns.ref_split) and not ns.workdir:
            errors.append("evaluate --bpd/--num/--ref_split need --workdir")
        if wants_samples and "fid" in ns.metrics and not (ns.reference or ns.ref_split):
            errors.append("FID needs --reference or --ref_split")
        if ns.out and not ns.out.endswith(".json"):
            errors.append(f"evaluate --out {ns.out} is a JSON file")
    if command == "sample" and ns.out and not ns.out.endswith(".npz"):
        errors.append(f"sample --out {ns.out} should be an .npz")
    if command == "prepare-data":
        from diffusion_jax.data.sources import TFDS_NAMES

        if ns.name not in TFDS_NAMES:
            errors.append(f"prepare-data {ns.name!r}: not one of {sorted(TFDS_NAMES)}")
    if command == "ref-stats":
        if ns.config:
            errors += _config_file_errors(ns.config)
        if ns.dataset:
            from diffusion_jax.data.pipeline import DATASETS

            if ns.dataset not in DATASETS:
                errors.append(f"ref-stats --dataset {ns.dataset!r} is not a dataset")
    if command == "import-weights" and ns.config:
        errors += _config_file_errors(ns.config)
    return errors


def _config_file_errors(name_or_path: str) -> list[str]:
    """A preset name or a config file (relative to the repository root) that does not load."""
    path = name_or_path if name_or_path in configs.PRESETS else str(ROOT / name_or_path)
    try:
        configs.get_config(path)
    except Exception as e:  # any failure to load is the finding
        return [f"{name_or_path} does not load: {type(e).__name__}: {e}"]
    return []


def _flat(config) -> dict:
    out = {}
    for key in flatten_keys(config):
        value = config
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def commands() -> dict[str, list[tuple[str, list[str]]]]:
    return {path.name: script_commands(path.read_text(), path.name) for path in SCRIPTS}


def test_every_result_has_its_script_and_the_readme_lists_them():
    assert {path.name for path in SCRIPTS} == EXPECTED_SCRIPTS
    readme = (PAPER / "README.md").read_text()
    for name in EXPECTED_SCRIPTS:
        assert name in readme, f"experiments/paper/README.md does not mention {name}"
    assert "not yet run" in readme


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash_with_strict_mode(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in script.read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_command_parses_with_the_cli(script, commands, monkeypatch):
    found = commands[script.name]
    assert found, f"{script.name} runs no diffusion-jax command"
    problems = []
    for where, argv in found:
        problems += [f"{where}: {error}" for error in command_errors(argv, monkeypatch)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_results_are_json_files_under_the_workdir(script, commands):
    evaluations = [argv for _, argv in commands[script.name] if argv[0] == "evaluate"]
    assert evaluations, f"{script.name} evaluates nothing"
    for argv in evaluations:
        out = argv[argv.index("--out") + 1]
        assert out.startswith("runs/paper/results/") and out.endswith(".json"), out


def test_every_config_the_scripts_name_loads(commands):
    paths = set()
    for found in commands.values():
        for _, argv in found:
            for i, word in enumerate(argv):
                if word == "--config":
                    paths.add(argv[i + 1])
    assert set(DERIVED_CONFIGS) <= paths
    for path in sorted(paths):
        assert not _config_file_errors(path), _config_file_errors(path)


@pytest.mark.parametrize("name", sorted(DERIVED_CONFIGS))
def test_derived_configs_differ_from_cifar10_only_where_intended(name):
    base = _flat(configs.get_config("cifar10"))
    derived = _flat(configs.get_config(name))
    assert set(derived) == set(base)
    changed = {key: derived[key] for key in base if derived[key] != base[key]}
    assert changed == DERIVED_CONFIGS[name]


def test_ddim_script_sweeps_the_papers_step_counts(commands):
    samples = [argv for _, argv in commands["ddim_steps.sh"] if argv[0] == "sample"]
    steps = {int(argv[argv.index("--steps") + 1]) for argv in samples}
    assert steps == {10, 20, 50, 100, 1000}
    for argv in samples:
        assert argv[argv.index("--sampler") + 1] == "ddim"
        assert float(argv[argv.index("--eta") + 1]) == 0.0
        assert argv[argv.index("--num") + 1] == "50000"


def test_ablation_trains_each_config(commands):
    trained = {
        argv[argv.index("--config") + 1]
        for _, argv in commands["table2_ablation.sh"]
        if argv[0] == "train"
    }
    assert trained == {"cifar10", "cifar10_vlb_fixed", "cifar10_vlb_learned"}


# The checker itself: it must catch the mistakes it exists for.

_BAD_COMMANDS = [
    "diffusion-jax sampel --workdir r",
    "diffusion-jax evaluate --workdir r --samples s.npz --reference ref.npz --output x.json",
    "diffusion-jax evaluate --workdir r --samples s.npz --ref ref.npz",  # an abbreviation
    "diffusion-jax sample --workdir r --sampler plms",
    "diffusion-jax sample --workdir r --steps fifty",
    "diffusion-jax sample --num 10",  # --workdir is required
    "diffusion-jax evaluate --samples s.npz --metrics fid",  # FID without a reference
    "diffusion-jax train --config cifar10 --workdir r --config.training.batch_sze=64",
    "diffusion-jax train --config no_such_config --workdir r",
    "diffusion-jax train --config cifar10 --workdir r --steps 5",
    "diffusion-jax ref-stats --dataset cifar10 --split train",  # --out is required
    "diffusion-jax prepare-data cifar100",
    "diffusion-jax import-weights --from d --out r --config no_such_config",
]


@pytest.mark.parametrize("line", _BAD_COMMANDS)
def test_checker_rejects_a_wrong_command(line, monkeypatch):
    ((_, argv),) = script_commands(line)
    assert command_errors(argv, monkeypatch)


def test_checker_accepts_a_right_command(monkeypatch):
    line = (
        "diffusion-jax train --config cifar10 --workdir r "
        "--config.training.batch_size=64 --config.model.dtype=bfloat16"
    )
    ((_, argv),) = script_commands(line)
    assert command_errors(argv, monkeypatch) == []


def test_parser_expands_variables_continuations_and_loops():
    text = "\n".join(
        [
            'OUT="${OUT:-runs/x}"',
            'N="${N:-7}"',
            "for S in 10 20; do",
            '  diffusion-jax sample --workdir "$OUT" \\',
            '    --steps "$S" --num "$N" --out "$OUT/s${S}.npz" || true',
            "done",
            "# diffusion-jax evaluate --bpd \\",
            "#   --workdir $OUT",
        ]
    )
    found = [argv for _, argv in script_commands(text)]
    assert found == [
        ["sample", "--workdir", "runs/x", "--steps", "10", "--num", "7", "--out", "runs/x/s10.npz"],
        ["sample", "--workdir", "runs/x", "--steps", "20", "--num", "7", "--out", "runs/x/s20.npz"],
        ["evaluate", "--bpd", "--workdir", "runs/x"],
    ]
    with pytest.raises(AssertionError, match="UNSET"):
        script_commands('diffusion-jax sample --workdir "$UNSET"')
    with pytest.raises(AssertionError, match="own line"):
        script_commands("if diffusion-jax sample --workdir r; then :; fi")
