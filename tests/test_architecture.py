"""The package's layering, read from the source with `ast` (function-level imports included):
no import circle, every import goes down the layer table (or stays inside its own folder), no
module over 400 lines, no function over 60 (configs aside), and each folder says what it does."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffusion_jax"

# Lowest first. A module may import its own folder and the folders of lower layers only.
LAYERS = [
    ("core", "configs", "errors"),  # pure maths; presets; the user-error types
    ("models", "data", "parallel", "perf", "checkpoint"),  # networks, input, devices, storage
    ("setup", "validation"),  # config -> parts: the one set-up path; config checks
    ("sampling",),  # samplers, runs loaded for inference, generate
    ("evaluation",),  # metrics, Inception, features, bits/dim
    ("training",),  # state, steps, the loop and its sample/eval hooks
    ("pretrained",),  # published checkpoints -> runs
    ("cli",),  # the command line
    ("__main__",),  # python -m diffusion_jax
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _module_name(path: Path) -> str:
    parts = ("diffusion_jax", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The package module that an imported dotted name lives in (None: not ours)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every module of ours that `module` imports, anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1]])
                base = f"{base}.{node.module}" if node.module else base
            # `from P import n`: the module P.n, or P itself when n is a name defined in P
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {m for n in names if (m := _resolve(n)) and m != module}
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""  # "": the package's face, diffusion_jax/__init__


def test_every_folder_and_top_module_has_a_layer():
    assert {_unit(m) for m in MODULES} - {""} <= set(RANK)


def test_imports_go_down_the_layers():
    wrong = []
    for module, imported in GRAPH.items():
        for target in imported:
            here, there = _unit(module), _unit(target)
            if there == "":
                if here not in ("cli", "__main__"):
                    wrong.append(f"{module} -> the package face (only the command line may)")
            elif here == "":
                wrong.append(f"the package face imports {target} (it re-exports lazily)")
            elif here != there and RANK[there] >= RANK[here]:
                wrong.append(f"{module} (layer {RANK[here]}) -> {target} (layer {RANK[there]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles():
    """Depth-first search for a back edge in the module graph."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(MODULES):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_are_short(module):
    text = MODULES[module].read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    if _unit(module) == "configs":
        return  # tables of settings
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


@pytest.mark.parametrize("unit", sorted(u for u in RANK if (PACKAGE / u).is_dir()))
def test_each_folder_says_what_it_does_and_what_it_may_import(unit):
    doc = ast.get_docstring(ast.parse((PACKAGE / unit / "__init__.py").read_text())) or ""
    assert len(doc) > 200 and "may import" in doc, doc


def test_the_checker_sees_function_level_imports_and_circles():
    """The checker itself: a function-level import up the layers, and a circle, are caught."""
    source = "def f():\n    from diffusion_jax.training import loop\n"
    tree = ast.parse(source)
    names = [n for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for n in node.names]
    assert [n.name for n in names] == ["loop"]
    assert _resolve("diffusion_jax.training.loop.fit") == "diffusion_jax.training.loop"
    assert "diffusion_jax.core.schedules" in GRAPH["diffusion_jax.core.diffusion"]
    assert "diffusion_jax.evaluation.bpd" in GRAPH["diffusion_jax.training.hooks"]


def test_the_public_api_resolves_lazily():
    """Every name the package's face lists is importable from it, and `import diffusion_jax`
    alone imports no stage (the names load on first use)."""
    import subprocess
    import sys

    import diffusion_jax

    for name in diffusion_jax.__all__:
        assert getattr(diffusion_jax, name) is not None, name
    assert diffusion_jax.make_train_step.__module__ == "diffusion_jax.training.step"
    code = (
        "import sys, diffusion_jax; print(sorted(m for m in sys.modules if m.startswith('diff')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['diffusion_jax']"
    with pytest.raises(AttributeError, match="no attribute 'q_smaple'"):
        diffusion_jax.q_smaple  # noqa: B018
