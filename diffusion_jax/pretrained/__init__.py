"""Published checkpoints: reading them, converting them to our networks, importing them as runs.

    from diffusion_jax.pretrained import diffusers, importer
    config, tensors = diffusers.read_diffusers_checkpoint("ddpm-cifar10-32")
    importer.import_weights("ddpm-cifar10-32", "runs/ddpm_cifar10")   # a run `sample` reads

`diffusers` (the DDPM checkpoints in diffusers' UNet2DModel layout: files, layout checks, the
parameter mapping), `importer` (the run directory: preset, scheduler settings, a TrainState at
step 0). It writes runs as training does, so it may import every layer below the command line
(core, configs, models, data, parallel, checkpoint, setup, sampling, evaluation, training).
"""
