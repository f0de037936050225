"""Data: where examples come from and how they reach the devices.

    from diffusion_jax.data import pipeline
    it = pipeline.make_train_iterator(config.data, global_batch_size=128, seed=0)
    batch = next(it)                       # {"image": [B/hosts, H, W, C] in [-1, 1], "label"?}

`sources` (TFDS through `tfds.data_source`, image folders, scikit-learn's digits, the 2-D toy),
`pipeline` (grain: shuffling, preprocessing, each host's block of the global batch, resumable
iterators; dataset metadata), `check` (folder datasets decoded up front, in parallel: unreadable
and small images), `images` (uint8 conversion and sample grids). The data stage may import only
layer 0 (it imports diffusion_jax.errors).
"""
