"""Importing diffusers' DDPM checkpoints (google/ddpm-*) into our U-Net: diffusion_jax.diffusers.

The core test builds diffusers' own UNet2DModel with random weights, saves it as diffusers does,
imports it and compares the two networks' outputs (needs torch + diffusers; skipped without them).
Every other test writes checkpoints from numpy arrays in the PyTorch layout, named by
`diffusers_tensors` below (an enumeration of UNet2DModel's modules written independently of the
importer), and runs without torch. The full-size 256x256 comparison is slow on CPU and runs only
with DIFFUSION_JAX_FULL_IMPORT_TESTS=1.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import cli
from diffusion_jax.models.unet import UNet
from diffusion_jax.pretrained import diffusers, importer
from diffusion_jax.sampling import generate, runs

# The layouts of google/ddpm-cifar10-32 and google/ddpm-{celebahq,church,bedroom,cat}-256.
CIFAR10 = dict(
    sample_size=32,
    block_out_channels=[128, 256, 256, 256],
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
)
LSUN256 = dict(
    sample_size=256,
    block_out_channels=[128, 128, 256, 256, 512, 512],
    down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
)
# The published config.json files (saved by diffusers 0.0.4) hold these fields.
PUBLISHED_FIELDS = dict(
    _class_name="UNet2DModel", _diffusers_version="0.0.4", act_fn="silu",
    attention_head_dim=None, center_input_sample=False, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1, in_channels=3, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-06, norm_num_groups=32, out_channels=3,
    time_embedding_type="positional",
)  # fmt: skip
SCHEDULER = dict(
    _class_name="DDPMScheduler", beta_end=0.02, beta_schedule="linear", beta_start=0.0001,
    clip_sample=True, num_train_timesteps=1000, trained_betas=None, variance_type="fixed_small",
)  # fmt: skip
TIMESTEPS = [0, 17, 500, 999]


def ddpm_config(layout: dict, *, width_div: int = 1, sample_size: int | None = None, **changes):
    """A config.json dict of `layout`, optionally narrower (channels / width_div) or smaller."""
    config = {**PUBLISHED_FIELDS, **layout, **changes}
    config["block_out_channels"] = [n // width_div for n in layout["block_out_channels"]]
    config["sample_size"] = sample_size or layout["sample_size"]
    return config


def diffusers_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors with the names and PyTorch shapes of UNet2DModel(**config)'s state dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    chs, layers = config["block_out_channels"], config["layers_per_block"]
    temb = 4 * chs[0]

    def conv(name, out, inp, k=3):
        shapes.update({f"{name}.weight": (out, inp, k, k), f"{name}.bias": (out,)})

    def linear(name, out, inp):
        shapes.update({f"{name}.weight": (out, inp), f"{name}.bias": (out,)})

    def norm(name, c):
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,)})

    def resnet(name, inp, out):
        norm(f"{name}.norm1", inp)
        conv(f"{name}.conv1", out, inp)
        linear(f"{name}.time_emb_proj", out, temb)
        norm(f"{name}.norm2", out)
        conv(f"{name}.conv2", out, out)
        if inp != out:
            conv(f"{name}.conv_shortcut", out, inp, k=1)

    def attention(name, c):
        norm(f"{name}.group_norm", c)
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            linear(f"{name}.{proj}", c, c)

    conv("conv_in", chs[0], config["in_channels"])
    linear("time_embedding.linear_1", temb, chs[0])
    linear("time_embedding.linear_2", temb, temb)
    c, skips = chs[0], [chs[0]]
    for i, kind in enumerate(config["down_block_types"]):
        for j in range(layers):
            resnet(f"down_blocks.{i}.resnets.{j}", c, chs[i])
            c = chs[i]
            if kind.startswith("Attn"):
                attention(f"down_blocks.{i}.attentions.{j}", c)
            skips.append(c)
        if i < len(chs) - 1:
            conv(f"down_blocks.{i}.downsamplers.0.conv", c, c)
            skips.append(c)
    resnet("mid_block.resnets.0", c, c)
    attention("mid_block.attentions.0", c)
    resnet("mid_block.resnets.1", c, c)
    for k, kind in enumerate(config["up_block_types"]):
        out = chs[len(chs) - 1 - k]
        for j in range(layers + 1):
            resnet(f"up_blocks.{k}.resnets.{j}", c + skips.pop(), out)
            c = out
            if kind.startswith("Attn"):
                attention(f"up_blocks.{k}.attentions.{j}", c)
        if k < len(chs) - 1:
            conv(f"up_blocks.{k}.upsamplers.0.conv", c, c)
    norm("conv_norm_out", chs[0])
    conv("conv_out", config["out_channels"], chs[0])
    assert not skips
    rng = np.random.default_rng(seed)

    def draw(name, shape):  # weights ~ 1/sqrt(fan_in), GroupNorm scales ~ 1, biases ~ 0
        x = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) > 1:
            return x / np.float32(np.sqrt(np.prod(shape[1:])))
        return np.float32(name.endswith(".weight")) + x / 5  # 1-D weights: GroupNorm scales

    return {name: draw(name, shape) for name, shape in shapes.items()}


def write_checkpoint(folder: Path, config: dict, tensors: dict, scheduler: dict | None = None):
    """A diffusers model folder: config.json + diffusion_pytorch_model.safetensors."""
    save_file = pytest.importorskip("safetensors.numpy").save_file
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    if scheduler is not None:
        (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


def deprecated_names(tensors: dict) -> dict:
    """The names old diffusers versions saved attention projections under."""
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for name, array in tensors.items():
        for new, previous in old.items():
            if ".attentions." in name and f".{new}." in name:
                name = name.replace(f".{new}.", f".{previous}.")
        renamed[name] = array
    return renamed


def num_params(params) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


SMALL_CIFAR = ddpm_config(CIFAR10, width_div=4)  # ch 32: the layout of the 35.7M network


# ----------------------------------------------------------------------------- layout mapping


@pytest.mark.parametrize(
    "layout, size, count", [(CIFAR10, 32, 35_746_307), (LSUN256, 256, 113_673_219)]
)
def test_full_size_layouts_map_every_tensor_to_the_preset_parameter_counts(layout, size, count):
    config = ddpm_config(layout)
    tensors = diffusers_tensors(config)
    kwargs, params = diffusers.convert_unet(config, tensors)
    assert kwargs["attn_resolutions"] == (16,) and kwargs["ch"] == 128
    assert num_params(params) == count == sum(a.size for a in tensors.values())
    levels = len(layout["block_out_channels"])
    # Convs OIHW -> HWIO, linears [out, in] -> [in, out], 1x1 shortcut convs -> dense kernels.
    np.testing.assert_array_equal(
        params["conv_in"]["kernel"], tensors["conv_in.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        params["temb_dense1"]["kernel"], tensors["time_embedding.linear_2.weight"].T
    )
    # up_blocks run from the lowest resolution: up_blocks.0 is our top level's decoder.
    up0 = "up_blocks.0.resnets.2"
    np.testing.assert_array_equal(
        params[f"up_{levels - 1}_block_2"]["nin_shortcut"]["kernel"],
        tensors[f"{up0}.conv_shortcut.weight"][:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(
        params[f"up_{levels - 1}_block_2"]["norm1"]["scale"], tensors[f"{up0}.norm1.weight"]
    )
    attn_level = int(np.log2(size // 16))  # the level whose resolution is 16x16
    up = levels - 1 - attn_level
    np.testing.assert_array_equal(
        params[f"up_{attn_level}_attn_1"]["proj_out"]["kernel"],
        tensors[f"up_blocks.{up}.attentions.1.to_out.0.weight"].T,
    )
    np.testing.assert_array_equal(
        params[f"down_{attn_level}_attn_0"]["q"]["bias"],
        tensors[f"down_blocks.{attn_level}.attentions.0.to_q.bias"],
    )
    np.testing.assert_array_equal(
        params["down_0_downsample"]["conv"]["kernel"],
        tensors["down_blocks.0.downsamplers.0.conv.weight"].transpose(2, 3, 1, 0),
    )


def test_deprecated_attention_names_load_the_same_params(tmp_path):
    tensors = diffusers_tensors(SMALL_CIFAR)
    old = deprecated_names(tensors)
    assert "mid_block.attentions.0.proj_attn.weight" in old
    new_dir = write_checkpoint(tmp_path / "new", SMALL_CIFAR, tensors)
    old_dir = write_checkpoint(tmp_path / "old", SMALL_CIFAR, old)
    _, expected = diffusers.convert_unet(*diffusers.read_diffusers_checkpoint(new_dir))
    _, params = diffusers.convert_unet(*diffusers.read_diffusers_checkpoint(old_dir))
    assert_trees_equal(params, expected)
    both = {**tensors, "mid_block.attentions.0.query.weight": tensors["conv_in.bias"]}
    with pytest.raises(diffusers.PretrainedError, match=r"both mid_block.attentions.0.query"):
        diffusers.convert_unet(SMALL_CIFAR, both)


# ----------------------------------------------------------------------------- clear errors


def test_missing_extra_and_misshapen_tensors_are_named():
    good = diffusers_tensors(SMALL_CIFAR)
    missing = dict(good)
    del missing["down_blocks.1.attentions.0.to_k.bias"]
    with pytest.raises(diffusers.PretrainedError, match="1 missing tensors: down_blocks.1.at"):
        diffusers.convert_unet(SMALL_CIFAR, missing)
    extra = {**good, "mid_block.resnets.0.film.weight": np.ones(3, np.float32)}
    with pytest.raises(diffusers.PretrainedError, match="1 extra tensors.*resnets.0.film.weight"):
        diffusers.convert_unet(SMALL_CIFAR, extra)
    wrong = {**good, "conv_in.weight": np.ones((32, 3, 5, 5), np.float32)}
    with pytest.raises(diffusers.PretrainedError, match=r"conv_in.weight \(32, 3, 5, 5\), exp"):
        diffusers.convert_unet(SMALL_CIFAR, wrong)
    # All three at once, in one message.
    wrong.update({"mid_block.resnets.0.film.weight": np.ones(3, np.float32)})
    del wrong["down_blocks.1.attentions.0.to_k.bias"]
    with pytest.raises(diffusers.PretrainedError) as e:
        diffusers.convert_unet(SMALL_CIFAR, wrong)
    message = str(e.value)
    assert "missing" in message and "extra" in message and "1 shape mismatches" in message
    other = ddpm_config(CIFAR10, width_div=2)  # a config.json of another network's width
    with pytest.raises(
        diffusers.PretrainedError,
        match=r"shape mismatches: conv_in.bias \(32,\), expected \(64,\)",
    ):
        diffusers.convert_unet(other, good)


@pytest.mark.parametrize(
    "changes, named",
    [
        (dict(flip_sin_to_cos=True), "flip_sin_to_cos=True"),
        (dict(freq_shift=0), "freq_shift=0"),
        (dict(downsample_padding=1), "downsample_padding=1"),
        (dict(attention_head_dim=8), "attention_head_dim=8"),
        (dict(norm_eps=1e-5), "norm_eps=1e-05"),
        (dict(norm_num_groups=16), "norm_num_groups=16"),
        (dict(num_class_embeds=10), "num_class_embeds=10"),
        (dict(time_embedding_type="fourier"), "time_embedding_type='fourier'"),
        (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
        (dict(up_block_types=["UpBlock2D"] * 3 + ["AttnUpBlock2D"]), "attention at levels"),
        (dict(down_block_types=["CrossAttnDownBlock2D"] * 4), "CrossAttnDownBlock2D"),
        (dict(out_channels=6), "out_channels=6"),
        (dict(cross_attention_dim=768), "unknown fields ['cross_attention_dim']"),
        (dict(_class_name="UNet2DConditionModel"), "UNet2DConditionModel"),
    ],
)
def test_non_ddpm_configs_are_refused_naming_the_field(changes, named):
    with pytest.raises(diffusers.PretrainedError) as e:
        diffusers.convert_unet({**SMALL_CIFAR, **changes}, {})
    assert named in str(e.value)


def test_fields_left_out_take_diffusers_defaults():
    # A config without attention_head_dim means 8-channel heads in diffusers: not DDPM's one head.
    config = {k: v for k, v in SMALL_CIFAR.items() if k not in ("attention_head_dim", "norm_eps")}
    with pytest.raises(diffusers.PretrainedError) as e:
        diffusers.convert_unet(config, {})
    assert "attention_head_dim=8" not in str(e.value)  # reported after the fixed fields
    assert "norm_eps=1e-05" in str(e.value)
    config["norm_eps"] = 1e-6
    with pytest.raises(diffusers.PretrainedError, match="attention_head_dim=8 makes 64 // 8"):
        diffusers.convert_unet(config, {})
    # Spelling out the single head (head dim = channels everywhere attention runs) is accepted.
    same = diffusers.ddpm_unet_kwargs({**SMALL_CIFAR, "attention_head_dim": 64})
    assert same == diffusers.ddpm_unet_kwargs(SMALL_CIFAR)


# ----------------------------------------------------------------------------- reading files


def test_reads_a_folder_its_unet_subfolder_or_the_weights_file(tmp_path):
    tensors = diffusers_tensors(SMALL_CIFAR)
    write_checkpoint(tmp_path / "pipe" / "unet", SMALL_CIFAR, tensors)
    weights = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    for path in (tmp_path / "pipe", tmp_path / "pipe" / "unet", weights):
        config, read = diffusers.read_diffusers_checkpoint(path)
        assert config == SMALL_CIFAR and read.keys() == tensors.keys()
        np.testing.assert_array_equal(read["conv_out.weight"], tensors["conv_out.weight"])
    with pytest.raises(diffusers.PretrainedError, match="does not exist.*hf download"):
        diffusers.read_diffusers_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(diffusers.PretrainedError, match=r"No weights in .*found \['config.json'"):
        diffusers.read_diffusers_checkpoint(tmp_path / "empty")


def test_missing_readers_say_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(SMALL_CIFAR))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(diffusers.PretrainedError, match="pip install torch"):
        diffusers.read_diffusers_checkpoint(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not read")  # preferred
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(diffusers.PretrainedError, match="pip install safetensors"):
        diffusers.read_diffusers_checkpoint(tmp_path)


# ----------------------------------------------------------------------------- the diffusion


def test_scheduler_settings_map_onto_our_diffusion_config():
    assert importer.diffusion_settings(SCHEDULER) == dict(
        beta_schedule="linear", num_timesteps=1000, mean_type="eps", var_type="fixed_small"
    )
    cosine = dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=4000)
    cosine.update(variance_type="fixed_large", prediction_type="v_prediction")
    assert importer.diffusion_settings(cosine) == dict(
        beta_schedule="cosine", num_timesteps=4000, mean_type="v", var_type="fixed_large"
    )
    # diffusers does not rescale the endpoints by 1000/T as we do: T=2000 cannot be matched.
    for bad, named in [
        (dict(beta_end=0.03), "linear betas from 0.0001 to 0.03"),
        (dict(num_train_timesteps=2000), "over 2000 steps"),
        (dict(trained_betas=[0.1, 0.2]), "trained_betas"),
        (dict(variance_type="learned_range"), "variance_type='learned_range'"),
        (dict(beta_schedule="exp"), "beta_schedule='exp'"),
    ]:
        with pytest.raises(diffusers.PretrainedError) as e:
            importer.diffusion_settings({**SCHEDULER, **bad})
        assert named in str(e.value)


@pytest.mark.parametrize(
    "folder, size, name",
    [
        ("ddpm-cifar10-32", 32, "cifar10"),
        ("ddpm-celebahq-256", 256, "celebahq256"),
        ("ddpm-church-256/unet", 256, "lsun_church"),
        ("google--ddpm-bedroom-256", 256, "lsun_bedroom"),
        ("ddpm-cat-256", 256, "lsun_cat"),
        ("my-model", 32, "cifar10"),
        ("locations", 256, "celebahq256"),
        ("hub/models--google--ddpm-bedroom-256/snapshots/0a1b2c/unet", 256, "lsun_bedroom"),
    ],
)
def test_training_config_is_chosen_from_the_folder_name(tmp_path, folder, size, name):
    assert importer.guess_config_name(tmp_path / folder, size) == name


# ----------------------------------------------------------------------------- the run directory


def test_import_writes_a_run_that_load_run_samples_from(tmp_path, capsys):
    src = write_checkpoint(
        tmp_path / "ddpm-cifar10-32", SMALL_CIFAR, diffusers_tensors(SMALL_CIFAR)
    )
    (src / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    out = tmp_path / "runs" / "cifar"
    assert cli.main(["import-weights", "--from", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{2_245_763:,} parameters" in printed and "configs/cifar10.py" in printed
    assert "diffusion.var_type: 'fixed_large' -> 'fixed_small'" in printed
    assert "model.ch: 128 -> 32" in printed

    # load_run needs the shape of a cifar10 example, not the (unprepared) dataset.
    run = runs.load_run(out)
    _, imported = diffusers.convert_unet(*diffusers.read_diffusers_checkpoint(src))
    assert_trees_equal(run.params, imported)
    raw = runs.load_run(out, use_ema=False)
    assert_trees_equal(raw.params, imported)
    assert run.step == 0 and run.shape == (32, 32, 3)
    assert run.config.model.ch == 32 and tuple(run.config.model.ch_mult) == (1, 2, 2, 2)
    assert run.config.diffusion.var_type == "fixed_small" and run.config.data.dataset == "cifar10"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a NaN sample would warn in the uint8 cast
        samples, _ = generate.generate(run, num=2, sampler="ddim", steps=2, progress=False)
    assert samples.shape == (2, 32, 32, 3) and samples.dtype == np.uint8

    # A second import to the same place is refused, and leaves no temporary directory behind.
    assert cli.main(["import-weights", "--from", str(src), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    broken = write_checkpoint(tmp_path / "broken", {**SMALL_CIFAR, "freq_shift": 0}, {})
    with pytest.raises(diffusers.PretrainedError, match="freq_shift"):
        importer.import_weights(broken, tmp_path / "runs" / "broken")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["cifar"]


def test_pipeline_folder_import_picks_the_lsun_config_and_the_scheduler(tmp_path):
    # Narrow, small and one block per level: saving a checkpoint compiles per parameter leaf.
    config = ddpm_config(LSUN256, width_div=4, sample_size=64, layers_per_block=1)
    pipe = tmp_path / "ddpm-church-256"
    write_checkpoint(pipe / "unet", config, diffusers_tensors(config))
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    out = importer.import_weights(pipe, tmp_path / "church")
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"]["dataset"] == "lsun/church_outdoor" and saved["data"]["image_size"] == 64
    assert saved["model"]["ch"] == 32 and saved["model"]["attn_resolutions"] == [4]
    assert saved["diffusion"]["var_type"] == "fixed_small"
    info = json.loads((out / importer.PROVENANCE_FILE).read_text())
    assert info["training_config"].endswith("lsun_church.py") and info["step"] == 0
    assert info["scheduler_config"].endswith("scheduler/scheduler_config.json")
    explicit = importer.import_weights(pipe / "unet", tmp_path / "cat", config_name="lsun_cat")
    assert json.loads((explicit / "config.json").read_text())["data"]["dataset"] == "lsun/cat"
    with pytest.raises(diffusers.PretrainedError, match="lsun_dog: neither a preset nor"):
        importer.import_weights(pipe, tmp_path / "dog", config_name="lsun_dog")


# ----------------------------------------------------------------------------- against diffusers


def _diffusers_unet(config: dict, seed: int = 0):
    """diffusers' UNet2DModel of `config` with random weights, norms and biases (not 1 and 0)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    model = diffusers.UNet2DModel(**kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # GroupNorm scales around 1, every bias around 0
                p.copy_(float(name.endswith("weight")) + 0.2 * torch.randn_like(p))
    return model


def _compare_outputs(model, folder: Path, batch: int = 4) -> tuple[float, float]:
    """(max |ours - diffusers|, max |diffusers|) on one batch with different t per image."""
    torch = pytest.importorskip("torch")
    config, tensors = diffusers.read_diffusers_checkpoint(folder)
    kwargs, params = diffusers.convert_unet(config, tensors)
    size = config["sample_size"]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(TIMESTEPS[:batch])
    with torch.no_grad():
        want = model(x, t).sample.numpy()  # [B, C, H, W]
    x_nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
    got = jax.jit(UNet(**kwargs).apply)({"params": params}, x_nhwc, jnp.asarray(t.numpy()))
    got = np.asarray(got).transpose(0, 3, 1, 2)
    return float(np.max(np.abs(got - want))), float(np.max(np.abs(want)))


@pytest.mark.parametrize(
    "config",
    [ddpm_config(CIFAR10), ddpm_config(LSUN256, width_div=4, sample_size=64)],
    ids=["cifar10-32-full", "256-layout-ch32-64px"],
)
def test_imported_unet_matches_diffusers(tmp_path, config):
    model = _diffusers_unet(config)
    model.save_pretrained(tmp_path, safe_serialization=True)
    diff, scale = _compare_outputs(model, tmp_path)
    assert scale > 0.5 and diff <= 1e-4 * scale, (diff, scale)


def test_a_bin_file_with_deprecated_names_imports_the_same_weights(tmp_path):
    torch = pytest.importorskip("torch")
    model = _diffusers_unet(SMALL_CIFAR)
    model.save_pretrained(tmp_path / "st", safe_serialization=True)
    old = deprecated_names(model.state_dict())
    assert "down_blocks.1.attentions.1.query.weight" in old
    (tmp_path / "bin").mkdir()
    torch.save(old, tmp_path / "bin" / "diffusion_pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    _, expected = diffusers.convert_unet(*diffusers.read_diffusers_checkpoint(tmp_path / "st"))
    _, params = diffusers.convert_unet(*diffusers.read_diffusers_checkpoint(tmp_path / "bin"))
    assert_trees_equal(params, expected)
    np.testing.assert_array_equal(
        params["mid_attn_1"]["proj_out"]["kernel"],
        model.mid_block.attentions[0].to_out[0].weight.detach().numpy().T,
    )


@pytest.mark.skipif(
    not os.environ.get("DIFFUSION_JAX_FULL_IMPORT_TESTS"),
    reason="the full 256x256 network takes minutes on CPU; set DIFFUSION_JAX_FULL_IMPORT_TESTS=1",
)
def test_full_256_unet_matches_diffusers(tmp_path):
    model = _diffusers_unet(ddpm_config(LSUN256))
    model.save_pretrained(tmp_path, safe_serialization=True)
    diff, scale = _compare_outputs(model, tmp_path, batch=2)
    print(f"full 256x256 U-Net: max |ours - diffusers| = {diff:.3g} (max |output| {scale:.3g})")
    assert diff <= 1e-4 * scale
