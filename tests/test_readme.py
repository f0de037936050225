"""The README's Quickstart and CI run the same commands, so a green CI means the README works."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_command(name: str) -> str:
    match = re.search(rf"^{name}='(.+)'$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)
    assert match, f"{name} not found in .ci/run"
    return match.group(1)


def test_ci_runs_the_readme_install_and_test_commands():
    quickstart = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("##", 1)[0]
    lines = [line.split("  #")[0].strip() for line in quickstart.splitlines()]
    assert _ci_command("INSTALL_CMD") in lines
    assert _ci_command("TORCH_CMD") in lines
    assert _ci_command("TEST_CMD") in lines


def test_readme_python_example_runs():
    """Executes the README's Python example, so that what it shows stays true."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert blocks, "the README should show the library in a Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    total = namespace["bpd"]["total_bpd"]
    assert total.shape == (4,) and bool((total > 0).all())
    assert 0 < float(namespace["loss"]) < 1  # L_simple below 1 (the loss of predicting 0)
    samples = namespace["samples"]
    assert samples.shape == (4, 8, 8, 1) and bool((abs(samples) <= 1).all())
