"""Published checkpoints: reading them, converting them to our networks, importing them as runs.

    from diffusion_jax.pretrained import diffusers, importer
    config, tensors = diffusers.read_diffusers_checkpoint("ddpm-cifar10-32")
    importer.import_weights("ddpm-cifar10-32", "runs/ddpm_cifar10")   # a run `sample` reads

`diffusers` (DDPM checkpoints in diffusers' UNet2DModel layout), `importer` (them as runs). It
writes runs as training does, so it may import every layer below the command line (core, configs,
models, data, parallel, checkpoint, setup, sampling, evaluation, training).
"""
