"""The train step's arithmetic against closed forms: the EMA recursion (fixed and warmed-up decay),
gradient accumulation as the mean over micro-batches, the rate at which labels become the null
label, and the importance weights in the loss that is differentiated.

Each test uses the toy2d MLP (16 units, one layer) or a one-parameter `apply_fn`, so that each
step compiles in about a second. Where the optimizer matters, `parts.tx` is replaced by SGD with
learning rate 1: the update is then minus the gradient. Adam's first step, lr * g / (|g| + eps),
and global-norm clipping both hide a constant factor in the gradient.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from diffusion_jax import configs, setup
from diffusion_jax.core import diffusion
from diffusion_jax.models import null_label
from diffusion_jax.training import state as state_lib
from diffusion_jax.training import step as step_lib

SHAPE = (2,)
T = 20


def _config(**training):
    config = configs.get_config("toy2d")
    config.model.update(mlp_hidden=16, mlp_layers=1, dropout=0.0)
    config.diffusion.update(num_timesteps=T)
    config.optim.update(learning_rate=1e-2, warmup_steps=0, grad_clip=0.0)
    config.training.update(**training)
    return config


def _batch(seed, size=16, labels=None):
    x0 = jax.random.normal(jax.random.key(seed), (size, *SHAPE))
    batch = {"image": np.asarray(x0)}
    if labels is not None:
        batch["label"] = labels
    return batch


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def _sgd(parts):
    return dataclasses.replace(parts, tx=optax.sgd(1.0))


# --- EMA ---------------------------------------------------------------------------------------


def _ema_closed_form(trajectory, decays):
    """ema_n = prod_k d_k p_0 + sum_k (1 - d_k) prod_{j > k} d_j p_k, where p_k are the
    parameters after update k = 1..n and d_k is the decay of update k."""
    n = len(decays)
    ema = np.prod(decays) * trajectory[0]
    for k in range(1, n + 1):
        ema = ema + (1.0 - decays[k - 1]) * np.prod(decays[k:]) * trajectory[k]
    return ema


@pytest.mark.parametrize("warmup", [False, True], ids=["fixed", "warmup"])
def test_ema_equals_its_closed_form_over_the_parameter_trajectory(warmup):
    decay, steps = 0.3, 6
    parts = setup.diffusion_parts(_config(ema_decay=decay, ema_warmup=warmup), SHAPE)
    state = state_lib.new_state(parts, parts.init_params())
    train_step = jax.jit(step_lib.make_train_step(parts))
    trajectory = [_flat(state.params)]
    for i in range(steps):
        state, _ = train_step(state, _batch(i))
        trajectory.append(_flat(state.params))
    assert int(state.step) == steps and int(state.skipped) == 0
    ema = _flat(state.ema_params)
    # The parameters move by much more than the tolerance, so a wrong recursion shows.
    assert np.max(np.abs(trajectory[-1] - trajectory[0])) > 1e-2

    def decays(first_step):
        # Update k is made by the step whose state.step is first_step + k - 1.
        s = np.arange(steps, dtype=np.float64) + first_step
        return np.minimum(decay, (1.0 + s) / (10.0 + s)) if warmup else np.full(steps, decay)

    # Warmup: state.step counts the steps already taken, so the first update uses s = 0 and
    # decay 1/10. Steps 0-2 use the warmup value and steps 3-5 use `decay`.
    if warmup:
        np.testing.assert_allclose(decays(0)[:4], [0.1, 2 / 11, 3 / 12, decay])
    expected = _ema_closed_form(trajectory, decays(0))
    np.testing.assert_allclose(ema, expected, rtol=1e-5, atol=1e-6, err_msg="EMA closed form")
    if warmup:  # the closed form tells the step index apart: s = 1 for the first update fails
        assert not np.allclose(ema, _ema_closed_form(trajectory, decays(1)), rtol=1e-5, atol=1e-6)


# --- gradient accumulation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def accumulated_steps():
    """One step from the same state on the same batch, with k = 1, 2, 4 micro-batches.

    The step draws t and the noise for the whole batch from fold_in(state.rng, state.step) and only
    then splits them into micro-batches, so every example sees the same t and noise for every k.
    The dropout key differs per micro-batch, and the toy2d MLP has no dropout."""
    batch = _batch(0, size=16)
    runs = {}
    for k in (1, 2, 4):
        parts = _sgd(setup.diffusion_parts(_config(grad_accum_steps=k), SHAPE))
        state = state_lib.new_state(parts, parts.init_params())
        new, metrics = jax.jit(step_lib.make_train_step(parts))(state, batch)
        runs[k] = (_flat(new.params) - _flat(state.params), jax.device_get(metrics))
    return runs


@pytest.mark.parametrize("k1, k2", [(1, 2), (1, 4), (2, 4)])
def test_gradient_accumulation_is_the_mean_over_micro_batches(accumulated_steps, k1, k2):
    update1, m1 = accumulated_steps[k1]
    update2, m2 = accumulated_steps[k2]
    # With SGD at rate 1 the update is -gradient; a sum over k micro-batches would be k times
    # larger. It is read off as p_after - p_before: atol is a few float32 ulps of |p| < 2.
    assert np.max(np.abs(update1)) > 0.1
    np.testing.assert_allclose(
        update2, update1, rtol=1e-5, atol=1e-6, err_msg=f"update, k={k2} vs k={k1}"
    )
    assert float(m2["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-5)
    assert float(m2["grad_norm"]) == pytest.approx(np.linalg.norm(update1), rel=1e-5)
    assert float(m2["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
    assert bool(m1["finite"]) and bool(m2["finite"])


# --- class dropping ----------------------------------------------------------------------------


def _label_recorder(seen):
    """A one-parameter network that records the labels it receives."""

    def apply_fn(params, x_t, t, y=None, *, rng=None, train=False):
        jax.debug.callback(lambda labels: seen.append(np.asarray(labels)), y)
        return x_t * params["w"]

    return apply_fn


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_labels_become_the_null_label_at_class_drop_prob(p):
    num_classes, batch = 10, 4096
    config = _config()
    config.model.num_classes = num_classes
    config.diffusion.class_drop_prob = p
    seen = []
    parts = setup.diffusion_parts(config, SHAPE)
    parts = dataclasses.replace(parts, apply_fn=_label_recorder(seen))
    state = state_lib.new_state(parts, {"w": jnp.ones(())})
    labels = np.arange(batch, dtype=np.int32) % num_classes  # none of them null
    train_step = jax.jit(step_lib.make_train_step(parts))
    jax.block_until_ready(train_step(state, _batch(0, batch, labels)))
    jax.effects_barrier()
    assert len(seen) == 1, "the network should run once per step"
    y = seen[0]
    dropped = y == null_label(num_classes)
    np.testing.assert_array_equal(y[~dropped], labels[~dropped])  # the rest pass unchanged
    count = int(dropped.sum())
    if p == 0.0:
        assert count == 0, f"{count} labels dropped at class_drop_prob 0"
    elif p == 1.0:
        assert count == batch, f"{count} of {batch} labels dropped at class_drop_prob 1"
    else:
        sd = np.sqrt(batch * p * (1 - p))  # Binomial(batch, p); 6 sd: a false alarm ~ 1e-9
        assert abs(count - batch * p) < 6 * sd, f"{count} of {batch} dropped at p={p}"


# --- importance sampling -----------------------------------------------------------------------


def test_importance_sampled_step_differentiates_the_weighted_mean_loss():
    """The step's loss (and its gradient) is mean_i(L_i / (T p_{t_i})), with p_t the importance
    distribution of a warm, non-uniform loss history, computed here in numpy."""
    config = _config()
    config.diffusion.update(timestep_sampler="importance", loss_type="mse")
    seen = []
    parts = _sgd(setup.diffusion_parts(config, SHAPE))
    network = parts.apply_fn

    def recording_apply_fn(params, x_t, t, y=None, *, rng=None, train=False):
        jax.debug.callback(lambda *a: seen.append([np.asarray(v) for v in a]), x_t, t)
        return network(params, x_t, t, y, rng=rng, train=train)

    parts = dataclasses.replace(parts, apply_fn=recording_apply_fn)
    params = parts.init_params()
    state = state_lib.new_state(parts, params)
    hist = state.loss_history
    history = hist.losses.shape[1]
    # A full history whose RMS loss at t grows like 1 + t: p_t is about (1 + t) / 210.
    table = np.outer(1.0 + np.arange(T), np.linspace(0.5, 1.5, history))
    hist = hist.replace(
        losses=jnp.asarray(table, jnp.float32), counts=jnp.full((T,), history, jnp.int32)
    )
    state = state.replace(loss_history=hist)

    batch = _batch(0, size=64)
    new, metrics = jax.jit(step_lib.make_train_step(parts))(state, batch)
    jax.effects_barrier()
    assert len(seen) == 1
    x_t, t = seen[0]
    assert np.array_equal(t, diffusion.model_timesteps(parts.schedule, jnp.asarray(t)))

    # p_t = (1 - u) rms_t / sum(rms) + u / T, and weights 1 / (T p_t)
    rms = np.sqrt(np.mean(table**2, axis=1))
    u = hist.uniform_prob
    probs = (1 - u) * rms / rms.sum() + u / T
    weights = 1.0 / (T * probs[t])
    assert weights.min() < 0.8 and weights.max() > 2.0, "the weights should differ from 1"

    # The noise the step drew: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
    alpha_bar = np.asarray(parts.schedule.alphas_cumprod, np.float64)[t][:, None]
    noise = (x_t - np.sqrt(alpha_bar) * batch["image"]) / np.sqrt(1 - alpha_bar)

    def weighted_loss(p):
        per_example = jnp.mean(jnp.square(noise - network(p, x_t, t)), axis=-1)  # [B]
        return jnp.mean(per_example * weights), jnp.mean(per_example)

    (expected, plain), grads = jax.value_and_grad(weighted_loss, has_aux=True)(params)
    # The weighted and plain means differ by far more than the tolerance.
    assert abs(float(expected) - float(plain)) > 1e-2 * float(plain)
    assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5), (
        f"step loss {float(metrics['loss'])}, mean(loss * weight) {float(expected)}, "
        f"mean(loss) {float(plain)}"
    )
    assert float(metrics["mse_mean"]) == pytest.approx(float(plain), rel=1e-5)
    np.testing.assert_allclose(
        _flat(new.params) - _flat(params),
        -_flat(grads),
        rtol=1e-4,
        atol=1e-6,
        err_msg="the step's gradient is not that of mean(loss * weight)",
    )
