"""The tutorial notebooks in notebooks/: committed without outputs, and executed end to end in their
fast setting (DJ_NOTEBOOK_FAST=1: few steps, tiny models, few samples), each in a fresh kernel of
this interpreter, as a user would run them from notebooks/ on a fresh checkout (no trained runs)."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_forward_process.ipynb", "02_toy2d.ipynb", "03_guidance_digits.ipynb"]
CELL_TIMEOUT = 300  # seconds per cell; the fast setting needs well under a minute per notebook
IGNORED = {"__pycache__", ".ipynb_checkpoints"}

# Prepended to each notebook in memory: the kernel must be this interpreter, in the fast setting.
GUARD = f"""import os
import sys

assert sys.prefix == {sys.prefix!r}, f"the kernel runs {{sys.executable}}, not the test's Python"
assert os.environ["DJ_NOTEBOOK_FAST"] == "1"
"""


def test_all_notebooks_are_tested():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


def _kernel_env(runs_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DJ_NOTEBOOK_FAST"] = "1"
    env["DJ_NOTEBOOK_RUNS"] = str(runs_dir)  # absent: the notebooks train what they need
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["MPLBACKEND"] = "Agg"
    # conftest.py gives the test process 8 virtual CPU devices; the kernels get the real one.
    flags = env.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _files() -> set[str]:
    """The repository's top-level entries and everything under notebooks/ (caches aside)."""
    top = {p.name for p in ROOT.iterdir() if p.name not in IGNORED}
    under = {
        str(p.relative_to(ROOT))
        for p in NOTEBOOK_DIR.rglob("*")
        if not IGNORED & set(p.relative_to(NOTEBOOK_DIR).parts)
    }
    return top | under


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, new_code_cell(GUARD))
    before = _files()
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # the kernel's working directory
    )
    client.execute(env=_kernel_env(tmp_path / "no_runs"))  # raises CellExecutionError on failure
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "every code cell ran"
    assert _files() == before, "the notebook wrote files into the repository"
    assert not (tmp_path / "no_runs").exists()
