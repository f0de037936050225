"""Configs: `base_config()` with every key a run reads, and the presets shipped in the package.

    from diffusion_jax import configs
    config = configs.get_config("digits")                  # a preset: configs/digits.py
    config = configs.get_config("path/to/my_experiment.py")   # or a file with get_config()
    configs.PRESETS                                        # ('celebahq256', 'cifar10', ...)

On the command line, `--config digits` and `--config path/to/file.py` are the same two forms.
A preset is a module with `get_config()` that edits `base_config()`; the DDPM paper's runs
(cifar10 and its Table 2 ablations, celebahq256, lsun_*), the offline digits runs and studies
(digits*, tiny, toy2d). Configs are the lowest layer with core: they may import nothing of the
package but their own modules, and build no network (the set-up does, in `diffusion_jax.setup`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from pathlib import Path

import ml_collections

from diffusion_jax.configs.base import base_config, ddpm256_config, flatten_keys, nearest_keys

__all__ = ["PRESETS", "base_config", "config_file", "ddpm256_config", "flatten_keys"]
__all__ += ["get_config", "nearest_keys"]

_HERE = Path(__file__).resolve().parent
PRESETS = tuple(sorted(p.stem for p in _HERE.glob("*.py") if p.stem not in ("__init__", "base")))


def config_file(name_or_path: str) -> Path:
    """The file of a preset name ("digits") or of a config path; a ValueError naming the presets
    (and the nearest one) when it is neither."""
    if name_or_path in PRESETS:
        return _HERE / f"{name_or_path}.py"
    path = Path(name_or_path)
    if path.suffix == ".py" and path.is_file():
        return path
    near = difflib.get_close_matches(path.stem, PRESETS, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ValueError(
        f"--config {name_or_path}: neither a preset nor a config file.{hint} Presets: "
        f"{', '.join(PRESETS)}; or the path of a .py file with get_config()."
    )


def get_config(name_or_path: str) -> ml_collections.ConfigDict:
    """The ConfigDict of a preset name or a config file (its `get_config()`), unlocked."""
    file = config_file(name_or_path)
    if file.parent == _HERE:
        return importlib.import_module(f"diffusion_jax.configs.{file.stem}").get_config()
    spec = importlib.util.spec_from_file_location(f"_diffusion_jax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
