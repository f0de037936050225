"""The experiment configuration: one `ml_collections.ConfigDict` with every key a run reads.

    from diffusion_jax.configs import base_config
    def get_config():                      # a preset, or an experiment's own file
        config = base_config()
        config.data.dataset = "cifar10"
        return config

`base_config()` returns an unlocked ConfigDict for experiment files to edit; the CLI locks it
(`config.lock()`) before applying command-line overrides, so a mistyped key fails loudly instead
of being silently added. Empty strings and zeros mean "not set" where a key is optional, because a
locked ConfigDict keeps each key's type.
"""

from __future__ import annotations

import difflib

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict(
        dict(
            dataset="digits",  # see diffusion_jax.data.pipeline.DATASETS
            data_dir="",  # TFDS data_dir; "" = TFDS's default (~/tensorflow_datasets)
            folder="",  # the image folder when dataset == "folder"
            image_size=0,  # resize (and centre-crop) to this size; 0 = the dataset's own size
            random_flip=False,  # random horizontal flips
            use_labels=False,  # put "label" in each batch (class-conditional models)
            num_workers=0,  # grain worker processes; 0 reads in the main process
            # folder datasets: leave out (and list) image files that do not decode, instead of
            # refusing to start
            skip_unreadable=False,
        )
    )

    config.model = ml_collections.ConfigDict(
        dict(
            name="unet",  # "unet" (the DDPM U-Net) or "mlp" (2-D toy data)
            ch=128,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(16,),
            dropout=0.1,
            resamp_with_conv=True,
            num_classes=0,  # > 0: class-conditional, with a null label for classifier-free guidance
            dtype="float32",  # compute dtype: "float32" or "bfloat16" (parameters stay float32)
            mlp_hidden=256,
            mlp_layers=3,
        )
    )

    config.diffusion = ml_collections.ConfigDict(
        dict(
            beta_schedule="linear",
            num_timesteps=1000,
            mean_type="eps",
            var_type="fixed_large",
            loss_type="mse",  # mse (L_simple), rescaled_mse, hybrid, kl, rescaled_kl
            timestep_sampler="uniform",  # or "importance" (improved DDPM, for the VB losses)
            # class-conditional models: the share of labels replaced by the null label, so that
            # one network also learns eps(x, null) for classifier-free guidance
            class_drop_prob=0.1,
        )
    )

    config.optim = ml_collections.ConfigDict(
        dict(
            optimizer="adam",  # or "adamw"
            learning_rate=2e-4,
            warmup_steps=5000,
            schedule="constant",  # after warmup: constant, cosine or linear decay
            decay_steps=0,  # the step where a decaying schedule reaches its end
            final_lr_fraction=0.0,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            grad_clip=1.0,  # global-norm clipping; 0 disables
        )
    )

    config.training = ml_collections.ConfigDict(
        dict(
            batch_size=128,  # global: summed over every device of every host
            num_steps=800_000,
            grad_accum_steps=1,
            # devices that share each parameter, EMA and optimizer array (FSDP / ZeRO-3 on a
            # ('data', 'fsdp') mesh); 1 replicates the state on every device
            fsdp=1,
            ema_decay=0.9999,
            ema_warmup=False,
            log_every=100,
            checkpoint_every=10_000,
            keep_checkpoints=3,  # the last K checkpoints are kept
            keep_every=0,  # and every M-th step forever (0: none)
            async_checkpoints=True,
            sample_every=10_000,  # sample grids from the EMA parameters; 0 disables
            num_samples=64,
            sample_respacing="",  # e.g. "250" to draw the grids with 250 of the T steps
            eval_every=0,  # calls the evaluation hook; 0 disables
            on_nonfinite="error",  # "error": stop naming the step; "skip": skip and count
            max_consecutive_skips=20,  # on_nonfinite="skip": stop after this many in a row
        )
    )

    # What training evaluates every training.eval_every steps (diffusion_jax.evaluation.evaluate).
    config.eval = ml_collections.ConfigDict(
        dict(
            bpd_examples=0,  # the bound in bits/dim on this many held-out examples; 0: off
            num_samples=0,  # FID/IS/KID/precision/recall of this many samples; 0: off
            sampler="ddim",  # how those samples are drawn
            steps=50,  # respaced sampling steps (0: all T)
            batch_size=64,
            features="inception",  # or "classifier" (a train-classifier run: feature_workdir)
            feature_workdir="",
            reference="",  # reference statistics .npz; "" = the held-out split, cached in workdir
        )
    )
    return config


def nearest_keys(config: ml_collections.ConfigDict, key: str, n: int = 3) -> list[str]:
    """The dotted keys of `config` closest to a mistyped dotted `key`."""
    keys = list(flatten_keys(config))
    return difflib.get_close_matches(key, keys, n=n, cutoff=0.5)


def flatten_keys(config: ml_collections.ConfigDict, prefix: str = ""):
    """Every leaf key of `config`, dotted: "training.batch_size", ..."""
    for name, value in config.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from flatten_keys(value, dotted + ".")
        else:
            yield dotted


def ddpm256_config(dataset: str, num_steps: int) -> ml_collections.ConfigDict:
    """The DDPM paper's 256x256 recipe (CelebA-HQ, LSUN): the 114M-parameter U-Net (ch 128,
    multipliers 1,1,2,2,4,4, attention at 16x16), no dropout, batch 64, Adam lr 2e-5, random
    flips, and samples with the posterior's variance (fixed_small; CIFAR-10's used beta_t)."""
    config = base_config()
    config.data.dataset = dataset
    config.data.image_size = 256
    config.data.random_flip = True
    config.model.update(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2)
    config.model.update(attn_resolutions=(16,), dropout=0.0)
    config.diffusion.update(beta_schedule="linear", num_timesteps=1000, mean_type="eps")
    config.diffusion.update(var_type="fixed_small", loss_type="mse")
    config.optim.update(learning_rate=2e-5, warmup_steps=5000, grad_clip=1.0)
    config.training.update(batch_size=64, num_steps=num_steps, ema_decay=0.9999)
    config.training.update(checkpoint_every=10_000, sample_every=10_000, num_samples=16)
    return config
