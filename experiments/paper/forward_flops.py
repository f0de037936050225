"""XLA's FLOP count of one U-Net forward pass (sampling mode: no dropout, no gradient) per image.

    python experiments/paper/forward_flops.py                 # cifar10 and celebahq256 configs
    python experiments/paper/forward_flops.py --configs cifar10 --batch 4

Only lowers the jitted forward pass (no compilation, no execution) with abstract parameters, so
it runs in seconds on a CPU. One sampling step of the ancestral or DDIM sampler is one forward
pass plus elementwise updates, so 50,000 samples x S steps cost about
50,000 x S x (this figure) FLOPs. The training figure in experiments/results/scaling_model.md
(forward + backward + loss) is the reference this is compared against.
"""

from __future__ import annotations

import argparse
import json


def forward_flops(config_name: str, batch: int) -> dict:
    """FLOPs of the lowered forward pass at `batch`, and per image."""
    import jax
    import jax.numpy as jnp

    from diffusion_jax import configs, setup

    parts = setup.diffusion_parts(configs.get_config(config_name))
    shape = parts.example_shape
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    params = parts.abstract_params()
    apply_fn = parts.apply_fn
    lowered = jax.jit(lambda p, x_t, t_: apply_fn(p, x_t, t_)).lower(params, x, t)
    cost = lowered.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0]
    flops = float(cost["flops"])
    return {
        "config": config_name,
        "image_shape": list(shape),
        "batch": batch,
        "forward_flops": flops,
        "forward_gflop_per_image": flops / batch / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=["cifar10", "celebahq256"])
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    for name in args.configs:
        print(json.dumps(forward_flops(name, args.batch)))


if __name__ == "__main__":
    main()
