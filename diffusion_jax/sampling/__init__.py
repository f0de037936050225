"""Sampling: from a trained network to images.

    from diffusion_jax.sampling import generate, runs, samplers
    x0 = samplers.sample_ddim(apply_fn, params, sched, (16, 32, 32, 3), key)   # a compiled chain
    run = runs.load_run("runs/digits")                       # config + EMA parameters only
    images, labels = generate.generate(run, num=1000, sampler="ddim", steps=50)

`samplers` (ancestral, DDIM, inversion, interpolation, `Denoiser`, `Guidance`), `solvers`
(DPM-Solver++ 2M/3M/2S, UniPC), `karras` (Euler and Heun in sigma, EDM's churn), `predict` (the
guided network at any noise level, which those two share), `runs` (a run's config and
parameters, a guidance classifier), `generate` (N samples to .npz and a grid, any sampler).
Sampling may import core, configs, models, data, parallel, checkpoint and setup; `generate` and
`runs` are imported on demand, not here.
"""

from diffusion_jax.sampling.samplers import Denoiser, Guidance

__all__ = ["Denoiser", "Guidance"]
