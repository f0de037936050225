"""The benchmark suite (experiments/benchmarks) and the U-Net's opt-in fast paths.

A smoke run of the suite's command on a one-level U-Net checks that its JSON has every field and
sane values (the PyTorch peer's part is skipped, with the reason, without torch and diffusers);
the FLOP counters are checked on closed forms; the k-steps-per-dispatch wrapper, the simulated
device scaling and the remat option are checked for computing the same as the plain path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import UNet, ddpm_unet
from diffusion_jax.pretrained import diffusers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(
    0, str(REPO)
)  # experiments/ is not installed; `pytest` puts only tests/ on the path
from experiments.benchmarks import cpuload, measure, ours, peer, run  # noqa: E402

HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers"))
NO_TORCH = "torch and diffusers are not installed (pip install -e '.[torch]')"


def _env() -> dict[str, str]:
    # One CPU device, as a user's command line would have (conftest sets eight).
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    """`python -m experiments.benchmarks.run` on the tiny config's U-Net with one level."""
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    what = "train,forward,sample" + (",peer" if HAS_TORCH else "")
    cmd = [sys.executable, "-m", "experiments.benchmarks.run", "--model", "tiny",
           "--batch", "4", "--what", what, "--steps", "2", "--warmup", "0",
           "--model_option", "ch_mult=1,", "--sample_steps", "2", "--samplers", "ddim",
           "--peer_layouts", "nchw", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=REPO, env=_env(), timeout=900)
    return json.loads(out.read_text())


def _check_timing(step: dict) -> None:
    assert 0 < step["min_s"] <= step["median_s"] <= step["max_s"] < 60
    assert step["others_cores"] is None or step["others_cores"] >= 0


def test_smoke_run_records_every_field(smoke):
    assert smoke["command"].startswith("python -m experiments.benchmarks.run --model tiny")
    assert smoke["batch"] == 4 and smoke["threads"] >= 1 and smoke["params"] > 0
    env = smoke["environment"]
    assert env["backend"] == "cpu" and env["device_count"] == 1 and env["cpu"]
    assert env["versions"]["jax"] == jax.__version__ and env["python"]
    for what in ("train", "forward"):
        r = smoke["results"][what]
        assert r["compile"]["lower_s"] > 0 and r["compile"]["compile_s"] > 0
        _check_timing(r["step"])
        assert r["images_per_s"] == pytest.approx(4 / r["step"]["median_s"])
        assert r["flops_per_step_xla"] > 0 and r["flops_per_step_jaxpr"] > 0
        # XLA counts only the multiply-adds that touch real input (not SAME padding) but adds
        # the elementwise work; the jaxpr count is whole kernel windows of convs and matmuls.
        assert 0.6 < r["flops_per_step_xla"] / r["flops_per_step_jaxpr"] < 1.2
        assert r["achieved_flops_per_s"] == pytest.approx(
            r["flops_per_step_xla"] / r["step"]["median_s"]
        )
        assert r["peak_flops_per_s"] > 1e9 and "measured" in r["peak_source"]
        assert 0 < r["utilisation"] < 2
        assert r["peak_memory"]["bytes"] > 10 * 2**20 and "RSS" in r["peak_memory"]["kind"]
        assert r["xla_memory"]["argument_bytes"] > 0 and r["xla_memory"]["total_bytes"] > 0
        assert r["all_finite"]
    train = smoke["results"]["train"]
    assert train["donated"] is False and train["steps_per_dispatch"] == 1  # CPU: not donated
    assert train["xla_memory"]["alias_bytes"] == 0
    assert np.isfinite(train["loss_first"]) and np.isfinite(train["loss_last"])
    # a training step costs about 3 forward passes (forward, and two products per backward op)
    fwd = smoke["results"]["forward"]["flops_per_step_jaxpr"]
    assert 2.5 < train["flops_per_step_jaxpr"] / fwd < 3.5
    sample = smoke["results"]["sample_ddim"]
    _check_timing(sample["step"])
    assert sample["sample_steps"] == 2 and sample["all_finite"]
    assert sample["step"]["median_s"] == pytest.approx(sample["chain"]["median_s"] / 2)


@pytest.mark.skipif(not HAS_TORCH, reason=NO_TORCH)
def test_smoke_run_times_the_pytorch_peer(smoke):
    theirs = smoke["results"]["peer"]["nchw"]
    assert theirs["params"] == smoke["params"]  # the same network
    assert theirs["threads"] == smoke["threads"] and theirs["batch"] == 4
    for what in ("train", "forward"):
        r = theirs["results"][what]
        _check_timing(r["step"])
        ratio = smoke["ratio_vs_peer"][what]
        assert ratio["peer_layout"] == "nchw"
        assert ratio["ratio"] == pytest.approx(
            smoke["results"][what]["images_per_s"] / r["images_per_s"]
        )
    # torch's FLOP counter sees the same convolutions and matmuls as our jaxpr count
    ours_fwd = smoke["results"]["forward"]["flops_per_step_jaxpr"]
    theirs_fwd = theirs["results"]["forward"]["flops_per_step_torch_counter"]
    assert theirs_fwd == pytest.approx(ours_fwd, rel=0.05)


def test_peer_is_skipped_with_a_reason_without_torch():
    reason = run.has_torch(sys.executable)
    assert (reason is None) == HAS_TORCH
    if reason:
        assert "not installed" in reason


def test_flop_counts_match_closed_forms():
    a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    assert measure.cost_flops(compiled) == measure.jaxpr_flops(jnp.matmul, a, b) == 2 * 64 * 32 * 16

    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    x, k = jnp.ones((2, 10, 12, 8)), jnp.ones((3, 3, 8, 16))
    want = 2 * (2 * 8 * 10 * 16) * (8 * 9)  # 2 * outputs * (C_in * kernel window)
    assert measure.jaxpr_flops(conv, x, k) == want
    assert measure.cost_flops(jax.jit(conv).lower(x, k).compile()) == pytest.approx(want, rel=0.01)
    # the weight gradient of a conv is itself a conv of the same cost; scan multiplies by length
    grad_k = jax.grad(lambda k: jnp.sum(conv(x, k)))
    assert measure.jaxpr_flops(grad_k, k) == 2 * want

    def scanned(x):
        return jax.lax.scan(lambda c, _: (c @ b @ b.T, None), x, length=3)[0]

    assert measure.jaxpr_flops(scanned, a) == 3 * 2 * (2 * 64 * 32 * 16)


def test_vendor_peaks():
    assert measure.vendor_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert measure.vendor_peak("NVIDIA H200", "float32") == 67e12
    assert measure.vendor_peak("NVIDIA A100-SXM4-40GB", "bfloat16") == 312e12
    assert measure.vendor_peak("TPU v5 lite", "bfloat16") == 197e12
    assert measure.vendor_peak("TPU v5p", "bfloat16") == 459e12
    assert measure.vendor_peak("TPU v6 lite", "bfloat16") == 918e12
    assert measure.vendor_peak("TPU v4", "float32") is None
    assert measure.vendor_peak("Some other chip", "bfloat16") is None


def test_peer_layout_is_what_our_importer_reads():
    """The peer's diffusers config for our U-Net converts back to the same U-Net."""
    for unet, shape in (
        (ddpm_unet("cifar10"), (32, 32, 3)),
        (ddpm_unet("lsun256"), (256, 256, 3)),
        (UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)), (8, 8, 1)),
    ):
        config = peer.diffusers_config(ours.model_attributes(unet), shape)
        kwargs = diffusers.ddpm_unet_kwargs(config)
        assert UNet(**kwargs).clone(dropout=unet.dropout) == unet.clone(parent=None)
        assert diffusers.image_shape(config) == shape


def test_model_options_parse():
    assert run.parse_options(["remat=full", "ch=32", "ch_mult=1,2", "dropout=0.0", "x=none"]) == {
        "remat": "full",
        "ch": 32,
        "ch_mult": (1, 2),
        "dropout": 0.0,
        "x": None,
    }
    assert run.parse_options(["ch_mult=1,"]) == {"ch_mult": (1,)}
    with pytest.raises(SystemExit):
        run.parse_options(["remat"])


def test_k_steps_per_dispatch_equal_k_single_steps():
    """`ours.multi_step` (lax.scan over k batches) reaches the same state as k calls."""
    from diffusion_jax.training.state import new_state
    from diffusion_jax.training.step import make_train_step

    config, shape = ours.load_model_config("toy2d")
    parts = ours.bench_parts(config, shape)
    step = make_train_step(parts)
    state = new_state(parts, parts.init_params(jax.random.key(0)))
    batches = {"image": jax.random.normal(jax.random.key(2), (3, 16, *shape))}
    one = jax.jit(step)
    want = state
    for i in range(3):
        want, metrics = one(want, {"image": batches["image"][i]})
    got, last = jax.jit(ours.multi_step(step, 3))(state, batches)
    assert measure.np_tree_max_abs_diff(got, want) < 1e-6
    assert float(last["loss"]) == pytest.approx(float(metrics["loss"]), rel=1e-6)


def test_scaling_gives_the_same_update_on_1_and_2_devices():
    cmd = [sys.executable, "-m", "experiments.benchmarks.scaling", "--devices", "1,2",
           "--model", "toy2d", "--batch", "8", "--steps", "3"]  # fmt: skip
    done = subprocess.run(cmd, check=True, cwd=REPO, env=_env(), capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["devices"] for r in result["runs"]] == [1, 2]
    assert result["all_same"], result
    assert all(r["step"]["median_s"] > 0 and len(r["losses"]) == 3 for r in result["runs"])


def test_others_cores_is_measured():
    reading = cpuload.others_now(0.2)
    assert reading is None or reading >= 0


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_unet_remat_keeps_parameters_and_gradients(remat):
    base = UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)
    model = base.clone(remat=remat)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    t = jnp.array([3, 700])
    params = base.init(jax.random.key(1), x, t)["params"]
    remat_params = model.init(jax.random.key(1), x, t)["params"]
    assert measure.np_tree_max_abs_diff(params, remat_params) == 0.0

    def loss(module, p):
        out = module.apply({"params": p}, x, t, train=True, rngs={"dropout": jax.random.key(2)})
        return jnp.mean(out**2)

    want = jax.grad(lambda p: loss(base, p))(params)
    got = jax.grad(lambda p: loss(model, p))(params)
    assert measure.np_tree_max_abs_diff(got, want) < 1e-6
    with pytest.raises(ValueError, match="Unknown UNet remat"):
        base.clone(remat="some").init(jax.random.key(1), x, t)


def test_unet_attention_impl_is_passed_to_dot_product_attention():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    t = jnp.array([3, 700])
    base = UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    params = base.init(jax.random.key(1), x, t)["params"]
    xla = base.clone(attention_impl="xla").apply({"params": params}, x, t)
    np.testing.assert_allclose(xla, base.apply({"params": params}, x, t), atol=1e-6)
    with pytest.raises(Exception, match="(?i)cudnn|gpu|implementation"):
        base.clone(attention_impl="cudnn").apply({"params": params}, x, t)


def test_rounds_are_pooled_and_ratios_taken_per_round():
    def step(times):
        return {"median_s": float(np.median(times)), "times_s": times, "others_cores": 0.01}

    def peer_round(t):
        return {
            "nchw": {"batch": 8, "results": {"train": {"step": step([t]), "images_per_s": 8 / t}}}
        }

    pooled = run.pool_rounds([step([1.0, 2.0]), step([3.0])])
    assert pooled["median_s"] == 2.0 and pooled["min_s"] == 1.0 and pooled["max_s"] == 3.0
    peer_rounds = [peer_round(1.0), peer_round(3.0)]
    merged = run.merge_peer_rounds(peer_rounds)
    assert merged["nchw"]["results"]["train"]["step"]["median_s"] == 2.0
    results = {"train": {"images_per_s": 8 / 1.0, "step": {"median_s": 1.0}}, "peer": merged}
    ratio = run.ratios(results, {"train": [step([1.0]), step([1.0])]}, peer_rounds)["train"]
    assert ratio["ratio"] == pytest.approx(2.0) and ratio["per_round"] == pytest.approx([1.0, 3.0])
