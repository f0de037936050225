"""The one set-up path: a config becomes the parts that training, sampling, evaluation, the
weight importer, the benchmarks and the scaling model all build from.

    parts = setup.diffusion_parts(config)        # schedule, network, apply_fn, optimizer
    parts = setup.classifier_parts(config, num_classes=10, example_shape=(8, 8, 1))
    params = parts.init_params()                 # keys from config.seed, as training draws them
    shapes = parts.abstract_params()             # jax.eval_shape: no memory, no compute

`training.state.init_state(parts, mesh)` turns the parts into the sharded TrainState of a run,
`sampling.runs` restores only the EMA parameters into `abstract_params()`, and the importer fills
`init_params`' tree with published weights. Nothing here touches data or devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffusion_jax.core import schedules
from diffusion_jax.data import pipeline as data
from diffusion_jax.models import make_apply_fn
from diffusion_jax.models.classifier import make_classifier_apply_fn
from diffusion_jax.models.factory import create_classifier, create_model


@dataclasses.dataclass(frozen=True)
class Parts:
    """What a config builds, before any array exists.

    `kind` is "diffusion" (apply_fn(params, x_t, t, y)) or "classifier" (apply_fn(params, x_t,
    t) -> logits); `num_classes` is the label count the network is conditioned on (0: none) for
    a diffusion model, the count it predicts for a classifier."""

    kind: str
    config: Any
    schedule: schedules.Schedule
    model: nn.Module
    apply_fn: Callable
    tx: optax.GradientTransformation
    lr_fn: Callable[[jax.Array], jax.Array]
    example_shape: tuple[int, ...]
    num_classes: int

    def keys(self) -> tuple[jax.Array, jax.Array]:
        """(parameter-init key, the run's base key): the two halves of PRNGKey(config.seed)."""
        return tuple(jax.random.split(jax.random.PRNGKey(int(self.config.seed))))

    def init_params(self, key: jax.Array | None = None) -> Any:
        """The network's freshly initialised parameters (key: `keys()[0]` by default)."""
        key = self.keys()[0] if key is None else key
        x = jnp.zeros((1, *self.example_shape), jnp.float32)
        t = jnp.zeros((1,), jnp.int32)
        if self.kind == "classifier":
            return self.model.init({"params": key, "dropout": key}, x, t)["params"]
        y = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return self.model.init({"params": key, "dropout": key}, x, t, y)["params"]

    def abstract_params(self) -> Any:
        """The parameters' tree of jax.ShapeDtypeStruct, without computing anything."""
        return jax.eval_shape(self.init_params)


def diffusion_parts(config: Any, example_shape: Sequence[int] | None = None) -> Parts:
    """The parts of `config`'s diffusion model. `example_shape` defaults to the data's, read from
    the dataset's metadata (a TFDS dataset need not be prepared: `data.example_shape`)."""
    shape = tuple(example_shape or data.example_shape(config.data))
    model = create_model(config, shape)
    num_classes = int(config.model.num_classes)
    return _parts("diffusion", config, model, make_apply_fn(model), shape, num_classes)


def classifier_parts(config: Any, *, num_classes: int, example_shape: Sequence[int]) -> Parts:
    """The parts of `config.classifier`, the noise-aware classifier p(y | x_t, t) trained on
    `config.diffusion`'s schedule, predicting `num_classes` classes of images `example_shape`."""
    model = create_classifier(config.classifier, num_classes)
    apply_fn = make_classifier_apply_fn(model)
    return _parts("classifier", config, model, apply_fn, tuple(example_shape), int(num_classes))


def _parts(kind: str, config: Any, model, apply_fn, shape, num_classes: int) -> Parts:
    d = config.diffusion
    schedule = schedules.make_schedule(d.beta_schedule, d.num_timesteps)
    tx, lr_fn = make_optimizer(config.optim)
    return Parts(kind, config, schedule, model, apply_fn, tx, lr_fn, shape, num_classes)


def learning_rate_schedule(optim: Any) -> Callable[[jax.Array], jax.Array]:
    """Linear warmup from 0 over `warmup_steps`, then constant / cosine / linear decay to
    `lr * final_lr_fraction` at `decay_steps` (DDPM: warmup 5,000 steps, then constant)."""
    lr, warmup = float(optim.learning_rate), int(optim.warmup_steps)
    kind = optim.schedule
    if kind == "constant":
        after = optax.constant_schedule(lr)
    elif kind in ("cosine", "linear"):
        decay = max(int(optim.decay_steps) - warmup, 1)
        end = lr * float(optim.final_lr_fraction)
        after = (
            optax.cosine_decay_schedule(lr, decay, alpha=float(optim.final_lr_fraction))
            if kind == "cosine"
            else optax.linear_schedule(lr, end, decay)
        )
    else:
        raise ValueError(
            f"Unknown optim.schedule {kind!r}; choose 'constant', 'cosine' or 'linear'."
        )
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(optim: Any) -> tuple[optax.GradientTransformation, Callable]:
    """Global-norm clipping, then Adam or AdamW with the schedule above. Returns (tx, lr_fn)."""
    lr_fn = learning_rate_schedule(optim)
    if optim.optimizer == "adam":
        opt = optax.adam(lr_fn, b1=optim.beta1, b2=optim.beta2, eps=optim.eps)
    elif optim.optimizer == "adamw":
        opt = optax.adamw(
            lr_fn, b1=optim.beta1, b2=optim.beta2, eps=optim.eps, weight_decay=optim.weight_decay
        )
    else:
        raise ValueError(f"Unknown optim.optimizer {optim.optimizer!r}; choose 'adam' or 'adamw'.")
    parts = []
    if optim.grad_clip and optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    parts.append(opt)
    return optax.chain(*parts), lr_fn
