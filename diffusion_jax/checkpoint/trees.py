"""Pytree helpers of the checkpointer: leaf paths and shapes as orbax's metadata writes them,
the non-finite leaves of a state, and default (replicated) shardings."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def key_name(key) -> str:
    """A tree path entry as text: a dict key, an attribute name or an index."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def shapes_by_path(tree: Any) -> dict[str, tuple]:
    """{'params/conv/kernel': shape}: the same string for a TrainState and orbax's metadata tree
    (which stores dataclasses and named tuples as dicts, tuples as lists, empty nodes as None)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "/".join(key_name(k) for k in path): tuple(getattr(leaf, "shape", ()))
        for path, leaf in flat
    }


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])  # [num_float_leaves] bool


def nonfinite_leaves(state: Any) -> list[str]:
    """The paths of the floating-point leaves of `state` holding a NaN or Inf."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    floats = [(p, x) for p, x in flat if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not floats:
        return []
    # One jitted reduction: its small output is replicated, so every host reads it, sharded or not.
    finite = np.asarray(_all_finite([x for _, x in floats]))
    return [
        "/".join(key_name(k) for k in p)
        for (p, _), ok in zip(floats, finite, strict=True)
        if not ok
    ]


def with_sharding(leaf: Any) -> Any:
    """`leaf`, replicated over every device when it is a ShapeDtypeStruct without a sharding."""
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("all",))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated)
    return leaf
