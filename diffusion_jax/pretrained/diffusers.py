"""Importing the published DDPM checkpoints (diffusers' `UNet2DModel` layout) into our U-Net.

    diffusion-jax import-weights --from ddpm-cifar10-32 --out runs/ddpm_cifar10
    diffusion-jax sample --workdir runs/ddpm_cifar10 --num 64 --sampler ddim --steps 50

    config, tensors = diffusers.read_diffusers_checkpoint("ddpm-cifar10-32")  # folder, unet/, file
    unet_kwargs, params = diffusers.convert_unet(config, tensors)    # UNet(**unet_kwargs), params

google/ddpm-cifar10-32, -celebahq-256, -church-256, -bedroom-256 and -cat-256 (Ho et al. 2020,
from TensorFlow) hold EMA weights. Only the DDPM layout is accepted: positional time embedding with
[sin, cos] and DDPM's frequency spacing (flip_sin_to_cos=False, freq_shift=1), GroupNorm(32, eps
1e-6), one head per attention, TF-style asymmetric padding of stride-2 convs (downsample_padding=0),
attention at the same levels down and up. Anything else is refused by name: it would load, then
compute something else. Old attention names (query/key/value/proj_attn) are read too.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion_jax.errors import UserError
from diffusion_jax.models.layers import GROUPNORM_EPSILON, GROUPNORM_GROUPS
from diffusion_jax.models.unet import UNet

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
DOWNLOAD_HINT = (
    "Download one first, e.g. `hf download google/ddpm-cifar10-32 --local-dir ddpm-cifar10-32` "
    "(pip install huggingface_hub), and pass that folder."
)


class PretrainedError(UserError, ValueError):
    """A checkpoint cannot be read or imported; the message says what is wrong and what to do."""


def read_diffusers_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, {name: float32 array, PyTorch layout}) of a model or pipeline folder (its
    model in `unet/`) or a weights file beside its config.json: .safetensors or .bin (torch)."""
    weights = _weights_file(Path(path))
    config_file = weights.parent / "config.json"
    if not config_file.is_file():
        raise PretrainedError(f"{weights} has no config.json beside it ({config_file}).")
    config = json.loads(config_file.read_text())
    if weights.suffix == ".safetensors":
        tensors = _read_safetensors(weights)
    else:
        tensors = _read_torch_bin(weights)
    return config, {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in tensors.items()}


def _weights_file(path: Path) -> Path:
    if path.is_file():
        if not path.name.endswith((".safetensors", ".bin")):
            raise PretrainedError(f"{path} is neither a .safetensors nor a .bin weights file.")
        return path
    if not path.is_dir():
        raise PretrainedError(f"No checkpoint at {path}: it does not exist. {DOWNLOAD_HINT}")
    if not (path / "config.json").is_file() and (path / "unet" / "config.json").is_file():
        path = path / "unet"  # a pipeline folder: the U-Net lives in unet/
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    found = sorted(p.name for p in path.iterdir())[:20]
    raise PretrainedError(
        f"No weights in {path}: expected {' or '.join(WEIGHT_FILES)} (and config.json) there or "
        f"in its unet/ folder; found {found or 'nothing'}. {DOWNLOAD_HINT}"
    )


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise PretrainedError(
            f"Reading {file} needs the safetensors package: `pip install safetensors`."
        ) from e
    return load_file(str(file))


def _read_torch_bin(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise PretrainedError(
            f"{file} is a PyTorch pickle, which needs torch to read: `pip install torch` (the CPU "
            "build is enough), or use the folder's diffusion_pytorch_model.safetensors instead."
        ) from e
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise PretrainedError(f"{file} holds a {type(state).__name__}, not a state dict.")
    return {k: v.detach().float().numpy() for k, v in state.items() if torch.is_tensor(v)}


# UNet2DModel's defaults (diffusers), which apply to keys a config.json leaves out.
_DEFAULTS: dict[str, Any] = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False,
    time_embedding_type="positional", time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=None, mid_block_type="UNetMidBlock2D", up_block_types=None,
    block_out_channels=None, layers_per_block=2, mid_block_scale_factor=1, downsample_padding=1,
    downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu",
    attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5,
    resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
    num_class_embeds=None, num_train_timesteps=None,
)  # fmt: skip
# The value each field must have for the network to compute what our DDPM U-Net computes.
_DDPM_VALUES: dict[str, Any] = dict(
    center_input_sample=False, time_embedding_type="positional", freq_shift=1,
    flip_sin_to_cos=False, mid_block_type="UNetMidBlock2D", mid_block_scale_factor=1,
    downsample_padding=0, downsample_type="conv", upsample_type="conv",
    norm_num_groups=GROUPNORM_GROUPS, norm_eps=GROUPNORM_EPSILON,
    resnet_time_scale_shift="default", add_attention=True, class_embed_type=None,
    num_class_embeds=None,
)  # fmt: skip
_BLOCKS = {"down": ("DownBlock2D", "AttnDownBlock2D"), "up": ("UpBlock2D", "AttnUpBlock2D")}


def _same(value: Any, wanted: Any) -> bool:
    if wanted is None or isinstance(wanted, bool):
        return value is wanted
    if isinstance(wanted, int | float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isclose(value, wanted, rel_tol=1e-6)
    return value == wanted


def ddpm_unet_kwargs(config: Mapping) -> dict[str, Any]:
    """The `UNet(**kwargs)` of a DDPM-layout UNet2DModel config.json; PretrainedError naming
    every field whose value our U-Net cannot reproduce."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise PretrainedError(
            f"config.json describes a {config['_class_name']}, not a UNet2DModel."
        )
    c = {**_DEFAULTS, **{k: v for k, v in config.items() if k in _DEFAULTS}}
    _raise_if(_field_problems(config, c))
    channels = [int(n) for n in c["block_out_channels"]]
    size = c["sample_size"]
    size = size if isinstance(size, int) else (size[0] if len(set(size)) == 1 else None)
    _raise_if(_structure_problems(c, channels, size))
    attn_down = [i for i, name in enumerate(c["down_block_types"]) if name.startswith("Attn")]
    _raise_if(_attention_problems(c, channels, attn_down))
    ch = channels[0]
    return dict(
        ch=ch,
        ch_mult=tuple(n // ch for n in channels),
        num_res_blocks=int(c["layers_per_block"]),
        attn_resolutions=tuple(size // 2**i for i in attn_down),
        dropout=float(c["dropout"]),
        resamp_with_conv=True,
    )


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise _layout_error(problems)


def _field_problems(config: Mapping, c: Mapping) -> list[str]:
    unknown = sorted(k for k in config if not k.startswith("_") and k not in _DEFAULTS)
    bad = [f"unknown fields {unknown}"] if unknown else []
    for key in ("sample_size", "block_out_channels", "down_block_types", "up_block_types"):
        if not c[key]:
            bad.append(f"{key} is missing")
    bad += [
        f"{key}={c[key]!r} (DDPM: {wanted!r})"
        for key, wanted in _DDPM_VALUES.items()
        if not _same(c[key], wanted)
    ]
    if c["act_fn"] not in ("silu", "swish"):
        bad.append(f"act_fn={c['act_fn']!r} (DDPM: 'silu')")
    if c["attn_norm_num_groups"] not in (None, GROUPNORM_GROUPS):
        bad.append(f"attn_norm_num_groups={c['attn_norm_num_groups']!r} (DDPM: None)")
    return bad


def _structure_problems(c: Mapping, channels: list[int], size: int | None) -> list[str]:
    """Levels, block types, widths and sizes that the DDPM U-Net cannot have."""
    down, up, levels, ch = (
        list(c["down_block_types"]),
        list(c["up_block_types"]),
        len(channels),
        channels[0],
    )
    bad = []
    if len(down) != levels or len(up) != levels:
        bad.append(f"{levels} block_out_channels but {len(down)} down / {len(up)} up blocks")
    bad += [f"{kind} block type {name!r} (DDPM: one of {_BLOCKS[kind]})"
            for kind, names in (("down", down), ("up", up))
            for name in names if name not in _BLOCKS[kind]]  # fmt: skip
    if any(n % ch or n % GROUPNORM_GROUPS for n in channels):
        bad.append(
            f"block_out_channels={channels}: each must be a multiple of the first and of "
            f"{GROUPNORM_GROUPS}"
        )
    if size is None or size % 2 ** (levels - 1):
        bad.append(f"sample_size={c['sample_size']!r}: a square size divisible by 2**{levels - 1}")
    if c["out_channels"] != c["in_channels"]:
        bad.append(f"out_channels={c['out_channels']} != in_channels={c['in_channels']}")
    if c["time_embedding_dim"] not in (None, 4 * ch):
        bad.append(f"time_embedding_dim={c['time_embedding_dim']} (DDPM: None, i.e. {4 * ch})")
    return bad


def _attention_problems(c: Mapping, channels: list[int], attn_down: list[int]) -> list[str]:
    """Attention that is not DDPM's: at other levels on the way up, or with several heads."""
    levels, bad = len(channels), []
    up = list(c["up_block_types"])
    attn_up = sorted(levels - 1 - k for k, name in enumerate(up) if name.startswith("Attn"))
    if attn_down != attn_up:
        bad.append(
            f"attention at levels {attn_down} on the way down but {attn_up} on the way up "
            "(up_blocks run from the lowest resolution)"
        )
    head = c["attention_head_dim"]
    multi = [n for n in {channels[i] for i in attn_down} | {channels[-1]} if head not in (None, n)]
    if multi:
        bad.append(
            f"attention_head_dim={head} makes {', '.join(f'{n} // {head}' for n in multi)} heads "
            "(DDPM: one head, attention_head_dim=None)"
        )
    return bad


def _layout_error(problems: Sequence[str]) -> PretrainedError:
    return PretrainedError(
        "config.json is not a DDPM-layout UNet2DModel that diffusion_jax's U-Net can reproduce: "
        + "; ".join(problems)
        + "."
    )


def image_shape(config: Mapping) -> tuple[int, int, int]:
    """(H, W, C) of the images a UNet2DModel config.json was trained on."""
    size = config["sample_size"]
    size = size if isinstance(size, int) else size[0]
    return (size, size, int(config.get("in_channels", _DEFAULTS["in_channels"])))


_TOP = {"conv_in": "conv_in", "temb_dense0": "time_embedding.linear_1",
        "temb_dense1": "time_embedding.linear_2", "norm_out": "conv_norm_out",
        "conv_out": "conv_out", "mid_block_1": "mid_block.resnets.0",
        "mid_block_2": "mid_block.resnets.1", "mid_attn_1": "mid_block.attentions.0"}  # fmt: skip
_SUB = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2",
        "conv2": "conv2", "nin_shortcut": "conv_shortcut", "norm": "group_norm", "q": "to_q",
        "k": "to_k", "v": "to_v", "proj_out": "to_out.0", "conv": "conv"}  # fmt: skip
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_DEPRECATED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_DEPRECATED_RE = re.compile(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")


def diffusers_name(path: Sequence[str], num_levels: int) -> str:
    """The diffusers tensor name of our parameter at `path` (e.g. ("up_3_block_0", "conv1",
    "kernel") -> "up_blocks.0.resnets.0.conv1.weight": up_blocks run from the lowest level)."""
    top, *inner, leaf = path
    if top in _TOP:
        module = _TOP[top]
    elif m := re.fullmatch(r"(down|up)_(\d+)_(block|attn)_(\d+)", top):
        side, level, kind, j = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        block = f"down_blocks.{level}" if side == "down" else f"up_blocks.{num_levels - 1 - level}"
        module = f"{block}.{'resnets' if kind == 'block' else 'attentions'}.{j}"
    elif m := re.fullmatch(r"(down|up)_(\d+)_(downsample|upsample)", top):
        level = int(m.group(2))
        block = (
            f"down_blocks.{level}"
            if m.group(1) == "down"
            else f"up_blocks.{num_levels - 1 - level}"
        )
        module = f"{block}.{m.group(3)}rs.0"
    else:
        raise PretrainedError(f"No diffusers name for the U-Net parameter {'/'.join(path)}.")
    return ".".join([module, *(_SUB[name] for name in inner), _LEAF[leaf]])


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """PyTorch layout of a Flax shape: conv HWIO -> OIHW, dense [in, out] -> [out, in]."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape)) if len(shape) == 2 else shape


def _to_flax(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """`array` (PyTorch layout) in the layout of Flax `shape`, or None if it cannot fit."""
    if len(shape) == 4 and array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)  # conv [O, I, kh, kw] -> [kh, kw, I, O]
    elif len(shape) == 2:
        # Linear [O, I] -> [I, O]; a 1x1 conv [O, I, 1, 1] (the resnet shortcut) is the same.
        if array.ndim > 2 and all(d == 1 for d in array.shape[2:]):
            array = array.reshape(array.shape[:2])
        array = array.T if array.ndim == 2 else array
    return np.ascontiguousarray(array) if array.shape == shape else None


def _rename_deprecated(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, array in tensors.items():
        if m := _DEPRECATED_RE.fullmatch(name):
            new = f"{m.group(1)}.{_DEPRECATED[m.group(2)]}.{m.group(3)}"
            if new in tensors:
                raise PretrainedError(f"The checkpoint has both {name} and {new}; keep one.")
            name = new
        out[name] = array
    return out


def convert_unet(
    config: Mapping, tensors: Mapping[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(UNet kwargs, Flax params) of a DDPM-layout UNet2DModel checkpoint: every tensor goes to
    exactly one parameter of `UNet(**kwargs)` (layout: `_to_flax`); PretrainedError names the
    missing tensors, those no parameter takes, and the shape mismatches."""
    kwargs = ddpm_unet_kwargs(config)
    h, w, c = image_shape(config)
    x = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    abstract = jax.eval_shape(UNet(**kwargs).init, jax.random.key(0), x, t)["params"]
    expected = traverse_util.flatten_dict(abstract)
    remaining = _rename_deprecated(tensors)
    flat, missing, wrong = {}, [], []
    for path, leaf in expected.items():
        name = diffusers_name(path, len(kwargs["ch_mult"]))
        if name not in remaining:
            missing.append(name)
            continue
        array = remaining.pop(name)
        converted = _to_flax(np.asarray(array, np.float32), tuple(leaf.shape))
        if converted is None:
            wrong.append(f"{name} {tuple(array.shape)}, expected {_torch_shape(leaf.shape)}")
        flat[path] = converted
    problems = [
        f"{len(names)} {what}: {_first(names)}"
        for names, what in (
            (missing, "missing tensors"),
            (sorted(remaining), "extra tensors that no U-Net parameter takes"),
            (wrong, "shape mismatches"),
        )
        if names
    ]
    if problems:
        raise PretrainedError(
            f"The weights do not fit the U-Net their config.json describes ({_describe(kwargs)}): "
            + "; ".join(problems)
            + ". Is the config.json the one saved with these weights?"
        )
    return kwargs, traverse_util.unflatten_dict(flat)


def _first(names: Sequence[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _describe(kwargs: Mapping) -> str:
    return (
        f"ch={kwargs['ch']}, ch_mult={tuple(kwargs['ch_mult'])}, "
        f"num_res_blocks={kwargs['num_res_blocks']}, "
        f"attention at {tuple(kwargs['attn_resolutions'])}"
    )
