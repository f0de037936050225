"""The train step: pure, identical on 1 and 8 devices, gradient accumulation, non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import parallel, setup
from diffusion_jax.configs import base_config
from diffusion_jax.training import state as state_lib
from diffusion_jax.training import step as step_lib

SHAPE = (8, 8, 1)


def _config(**training):
    config = base_config()
    # ch 64: with 32 groups of 2 channels, no bias sits right before a GroupNorm that cancels it
    # (a zero-gradient parameter whose Adam update is pure rounding noise).
    config.model.update(ch=64, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
    config.diffusion.update(beta_schedule="cosine", num_timesteps=20)
    config.optim.update(learning_rate=1e-3, warmup_steps=0)
    config.training.update(batch_size=16, ema_decay=0.9, **training)
    return config


def _setup(config, devices):
    mesh = parallel.data_mesh(devices)
    parts = setup.diffusion_parts(config, SHAPE)
    _, init = state_lib.init_state(parts, mesh)
    step = step_lib.make_train_step(parts)
    return mesh, init(), step_lib.compile_train_step(step, mesh)


def _batch(mesh, seed=0):
    x = jax.random.uniform(jax.random.key(seed), (16, *SHAPE), minval=-1, maxval=1)
    return parallel.global_batch(mesh, {"image": np.asarray(x)})


def _run(config, devices, steps=2):
    mesh, state, step_fn = _setup(config, devices)
    metrics = []
    for i in range(steps):
        state, m = step_fn(state, _batch(mesh, i))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


@pytest.fixture(scope="module")
def one_device_run():
    return _run(_config(), jax.devices()[:1])


def test_eight_devices_match_one_device(one_device_run):
    assert len(jax.devices()) == 8, "tests/conftest.py asks XLA for 8 host devices"
    state1, m1 = one_device_run
    state8, m8 = _run(_config(), jax.devices())
    assert int(state8.step) == 2
    for a, b in zip(
        jax.tree_util.tree_leaves(state1), jax.tree_util.tree_leaves(state8), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert m1[1]["loss"] == pytest.approx(float(m8[1]["loss"]), rel=1e-5)


def test_the_step_trains_and_keeps_an_ema(one_device_run):
    state, metrics = one_device_run
    assert all(bool(m["finite"]) for m in metrics) and int(state.skipped) == 0
    assert metrics[0]["loss"] > 0 and metrics[0]["grad_norm"] > 0
    kernel = state.params["conv_in"]["kernel"]
    ema = state.ema_params["conv_in"]["kernel"]
    assert not np.allclose(kernel, ema)  # decay 0.9: the EMA trails the parameters


def test_gradient_accumulation_matches_the_full_batch(one_device_run):
    state1, _ = one_device_run
    state2, _ = _run(_config(grad_accum_steps=4), jax.devices()[:1])
    for a, b in zip(
        jax.tree_util.tree_leaves(state1), jax.tree_util.tree_leaves(state2), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_non_finite_updates_are_not_applied():
    for mode in ("error", "skip"):
        config = _config(on_nonfinite=mode)
        mesh, state, step_fn = _setup(config, jax.devices()[:1])
        before = jax.device_get(state.params)
        bad = _batch(mesh)
        bad = {"image": bad["image"].at[0, 0, 0, 0].set(jnp.nan)}
        state, metrics = step_fn(state, bad)
        assert not bool(metrics["finite"]) and int(state.skipped) == 1 and int(state.step) == 1
        for a, b in zip(
            jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params), strict=True
        ):
            np.testing.assert_array_equal(a, b)
        state, metrics = step_fn(state, _batch(mesh, 1))
        moved = not np.array_equal(before["conv_in"]["kernel"], state.params["conv_in"]["kernel"])
        # "skip" carries on with the next good batch; "error" freezes until the loop stops the run
        assert moved == (mode == "skip")


def test_fsdp_shards_the_state_and_computes_the_replicated_update(one_device_run):
    """A ('data': 2, 'fsdp': 4) mesh: each large array of the state is split 4 ways, the batch 8
    ways, and two steps give the state of the one-device run."""
    config = _config()
    mesh = parallel.make_mesh(fsdp=4)
    parts = setup.diffusion_parts(config, SHAPE)
    abstract, init = state_lib.init_state(parts, mesh)
    shardings = jax.tree_util.tree_map(lambda a: a.sharding, abstract)
    step_fn = step_lib.compile_train_step(step_lib.make_train_step(parts), mesh, shardings)
    state = init()
    for i in range(2):
        state, metrics = step_fn(state, _batch(mesh, i))
    kernel = state.opt_state[1][0].mu["mid_block_1"]["conv1"]["kernel"]  # [3, 3, 64, 64]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (3, 3, 64, 16)
    assert state.step.sharding.is_fully_replicated
    replicated_bytes = parallel.per_device_bytes(
        jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    )
    assert parallel.per_device_bytes(state) < 0.3 * replicated_bytes  # ~1/4, small arrays whole

    state1, m1 = one_device_run
    for a, b in zip(
        jax.tree_util.tree_leaves(state1), jax.tree_util.tree_leaves(state), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert m1[1]["loss"] == pytest.approx(float(metrics["loss"]), rel=1e-5)


def test_fsdp_spec_splits_the_largest_divisible_axis():
    P = jax.sharding.PartitionSpec
    assert parallel.fsdp_spec((3, 3, 128, 256), 8) == P(None, None, None, "fsdp")
    assert parallel.fsdp_spec((512, 100), 8) == P("fsdp")
    assert parallel.fsdp_spec((3, 3, 5, 7), 8, min_size=1) == P()  # nothing divides: whole
    assert parallel.fsdp_spec((256,), 8) == P()  # small: whole
    assert parallel.fsdp_spec((3, 3, 128, 256), 1) == P()
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        parallel.make_mesh(fsdp=3)


def test_state_is_donated_on_accelerators_only():
    """On CPUs donating the state made XLA copy it (and the step slower); elsewhere it halves
    the state's memory. The caller may override either way."""

    mesh = parallel.data_mesh()
    assert step_lib.donate_by_default(mesh) is (jax.devices()[0].platform != "cpu")

    def step(state, batch):
        return {"w": state["w"] + batch["image"].sum()}, {"loss": batch["image"].mean()}

    state = {"w": jnp.zeros((64, 64))}
    batch = parallel.global_batch(mesh, {"image": np.ones((8, 2), np.float32)})
    for donate in (None, True, False):
        fn = step_lib.compile_train_step(step, mesh, donate=donate)
        aliased = fn.lower(state, batch).compile().memory_analysis().alias_size_in_bytes
        expect = step_lib.donate_by_default(mesh) if donate is None else donate
        assert (aliased > 0) is expect
