"""The PyTorch peer: the same DDPM U-Net as diffusers' `UNet2DModel` (the layout of
google/ddpm-cifar10-32), timed on the same batch as ours, in its own process.

    python -m experiments.benchmarks.peer --unet '{"ch": 128, "ch_mult": [1, 2, 2, 2], ...}' \
        --image_shape 32,32,3 --batch 8 --threads 2 --what train,forward [--layout channels_last]

`experiments.benchmarks.run --what peer` starts this module with the U-Net of the model being
benchmarked and prints the ratio of the two. The training step is the one our `train_step` runs:
t ~ U{0..T-1}, x_t = q_sample(x_0, t, eps), L_simple = mean((eps - eps_theta(x_t, t))^2) with
dropout on, backward, clipping the global gradient norm to 1, Adam (lr 2e-4, betas 0.9/0.999,
eps 1e-8, foreach) and an EMA update of every parameter (decay 0.9999). The forward pass is the
network alone in eval mode under `torch.inference_mode()`. Everything in float32 eager PyTorch on
the CPU with `torch.set_num_threads(--threads)`; one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import time

from experiments.benchmarks import cpuload


def diffusers_config(unet: dict, image_shape: tuple[int, int, int]) -> dict:
    """The `UNet2DModel(**config)` that computes our `UNet(**unet)` (the DDPM layout that
    `diffusion_jax.pretrained` imports: one attention head, DDPM's time embedding, TF padding)."""
    if unet.get("num_classes"):
        raise ValueError("The PyTorch peer is unconditional; benchmark a model with num_classes=0.")
    if not unet.get("resamp_with_conv", True):
        raise ValueError("The PyTorch peer's DDPM layout resamples with convolutions.")
    size, _, channels = image_shape
    ch, mult = int(unet["ch"]), [int(m) for m in unet["ch_mult"]]
    attn = {int(r) for r in unet["attn_resolutions"]}
    levels = len(mult)
    with_attn = [size // 2**i in attn for i in range(levels)]
    out_channels = unet.get("out_channels") or (
        2 * channels if unet.get("learned_variance") else channels
    )
    return dict(
        sample_size=size,
        in_channels=channels,
        out_channels=out_channels,
        block_out_channels=[ch * m for m in mult],
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in with_attn],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(with_attn)],
        layers_per_block=int(unet["num_res_blocks"]),
        dropout=float(unet.get("dropout", 0.0)),
        attention_head_dim=None,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        norm_eps=1e-6,
        norm_num_groups=32,
        act_fn="silu",
        center_input_sample=False,
        mid_block_scale_factor=1,
        time_embedding_type="positional",
    )


def _summary(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
        "times_s": [round(t, 5) for t in times],
    }


def _time(fn, steps: int, warmup: int, retry: tuple[float | None, int, float]) -> dict:
    """Like `measure.time_calls`: timed again (after waiting for quiet) while other processes
    used more than retry[0] cores, at most retry[1] times; the least disturbed attempt."""
    max_others, retries, wait_s = retry
    for _ in range(warmup):
        fn()
    attempts = []
    for attempt in range(retries + 1):
        if attempt:
            cpuload.wait_until_quiet(timeout_s=wait_s)
        times = []
        with cpuload.Others() as others:
            for _ in range(steps):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        attempts.append(
            {**_summary(times), "others_cores": others.cores, "steal_cores": others.steal}
        )
        if max_others is None or others.cores is None or others.cores <= max_others:
            break
    best = min(attempts, key=lambda a: a["others_cores"] or 0.0)
    if len(attempts) > 1:
        best["attempts"] = [(round(a["median_s"], 5), a["others_cores"]) for a in attempts]
    return best


def _count_flops(fn) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def run(args) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = json.loads(args.unet)
    shape = tuple(int(s) for s in args.image_shape.split(","))
    config = diffusers_config(unet, shape)
    model = diffusers.UNet2DModel(**config)
    num_params = sum(p.numel() for p in model.parameters())
    channels_last = args.layout == "channels_last"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    h, w, c = shape
    x0 = (torch.rand(args.batch, c, h, w) * 2 - 1).contiguous(memory_format=fmt)

    betas = torch.linspace(1e-4, 0.02, args.num_timesteps, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    sqrt_ab, sqrt_1m_ab = alpha_bar.sqrt().float(), (1 - alpha_bar).sqrt().float()
    params = [p for p in model.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    gen = torch.Generator().manual_seed(1)

    def train_step():
        model.train()
        t = torch.randint(0, args.num_timesteps, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen).contiguous(memory_format=fmt)
        x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1m_ab[t].view(-1, 1, 1, 1) * noise
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((noise - model(x_t, t).sample) ** 2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - 0.9999)
        return float(loss)

    t_eval = torch.arange(args.batch) * (args.num_timesteps // max(args.batch, 1))

    def forward():
        model.eval()
        with torch.inference_mode():
            return model(x0, t_eval).sample

    results = {}
    for what in args.what.split(","):
        fn = {"train": train_step, "forward": forward}[what]
        start = time.perf_counter()
        fn()
        first = time.perf_counter() - start
        retry = (args.max_others_cores, args.retries, args.quiet_wait)
        stats = _time(fn, args.steps, max(args.warmup - 1, 0), retry)
        flops = _count_flops(fn) if args.count_flops else None
        results[what] = {
            "first_call_s": first,
            "step": stats,
            "images_per_s": args.batch / stats["median_s"],
            "flops_per_step_torch_counter": flops,
            "achieved_flops_per_s": flops / stats["median_s"] if flops else None,
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "framework": "pytorch",
        "model": "diffusers.UNet2DModel",
        "diffusers_config": config,
        "params": num_params,
        "batch": args.batch,
        "layout": args.layout,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "peak_memory": {"bytes": int(rss), "kind": "process peak RSS"},
        "results": results,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--unet", required=True, help="our UNet's attributes as JSON")
    p.add_argument("--image_shape", required=True, help="H,W,C")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--what", default="train,forward")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layout", choices=["nchw", "channels_last"], default="nchw")
    p.add_argument("--num_timesteps", type=int, default=1000)
    p.add_argument("--count_flops", action="store_true", help="one extra call under FlopCounter")
    p.add_argument("--max_others_cores", type=float, default=None)
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--quiet_wait", type=float, default=0.0)
    args = p.parse_args(argv)
    if math.prod(int(s) for s in args.image_shape.split(",")) <= 0:
        p.error("--image_shape must be positive")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
