"""Sampling: from a trained network to images.

    from diffusion_jax.sampling import generate, runs, samplers
    x0 = samplers.sample_ddim(apply_fn, params, sched, (16, 32, 32, 3), key)   # a compiled chain
    run = runs.load_run("runs/digits")                       # config + EMA parameters only
    images, labels = generate.generate(run, num=1000, sampler="ddim", steps=50)

`samplers` (ancestral, DDIM, inversion, interpolation: `lax.fori_loop`s over the reverse steps of
one model-output function, with `Denoiser`, how to read the network's output, and `Guidance`,
classifier-free and classifier guidance), `runs` (a run's config and parameters read from its
checkpoint, a guidance classifier), `generate` (N samples in sharded chunks to .npz and a grid).
Sampling may import core, configs, models, data, parallel, checkpoint and setup; `generate` and
`runs` are imported on demand, not here.
"""

from diffusion_jax.sampling.samplers import Denoiser, Guidance

__all__ = ["Denoiser", "Guidance"]
