"""The CPU-scale study: the DDPM paper's questions asked of the bundled digits, end to end on two
CPU cores.

    diffusion-jax train --config digits --workdir runs/digits
    diffusion-jax train --config digits_hybrid --workdir runs/digits_hybrid
    diffusion-jax train --config digits_cond --workdir runs/digits_cond
    diffusion-jax train-classifier --config digits_features \\
        --workdir runs/digits_features
    python experiments/digits_study.py     # -> experiments/results/digits_study.{json,md,png}

Every score is against the 185 held-out digits, with the digits feature network's 128-d features
and 10 logits in place of Inception's (see experiments/digits_evaluation.py), on --num samples
per row (default 500):

1. the objective: L_simple with fixed variances (preset digits) against the hybrid loss with
   learned variances (preset digits_hybrid): FID, KID, precision/recall of samples and bits/dim
   of the held-out digits (all 1,000 steps of the bound);
2. samplers: ancestral against DDIM (eta 0) at 10 ... 1,000 steps, FID and time;
3. classifier-free guidance: the weight w against FID and the share of samples the feature
   network assigns to the requested class (the trade-off curve).

The training runs are not started here; their times are in each run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax

from diffusion_jax.evaluation import bpd, evaluate, features
from diffusion_jax.sampling import generate, runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
STEP_COUNTS = (10, 25, 50, 100, 250, 1000)
CFG_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=500, help="samples per row")
    p.add_argument("--runs", default=str(ROOT / "runs"), help="folder of the four runs")
    p.add_argument("--steps", default=",".join(map(str, STEP_COUNTS)))
    p.add_argument("--cfg_weights", default=",".join(map(str, CFG_WEIGHTS)))
    p.add_argument("--skip_bpd", action="store_true", help="leave out the bits/dim rows")
    p.add_argument("--out", default=str(RESULTS / "digits_study"), help="path prefix of outputs")
    p.add_argument("--replot", action="store_true", help="redraw the .md and .png from the .json")
    return p.parse_args(argv)


def new_report(num: int, ref, extractor) -> dict:
    """The report's header (machine, sample count, reference and features) and empty sections."""
    return {
        "machine": f"{platform.machine()}, {jax.device_count()} CPU device(s), "
        f"{len(os.sched_getaffinity(0))} cores, jax {jax.__version__}",
        "num_samples": num,
        "reference": ref.source,
        "features": extractor.name,
        "objective": [],
        "samplers": [],
        "guidance": [],
    }


def study_objective(report: dict, score, models: dict, *, with_bpd: bool) -> None:
    """Section 1, the objective: each model (name -> run) sampled ancestrally with 1000 and 50
    steps and with DDIM 50, and (with `with_bpd`) its held-out bits/dim."""
    for name, run in models.items():
        for sampler, steps in (("ancestral", 1000), ("ancestral", 50), ("ddim", 50)):
            row = {"objective": name, "sampler": sampler, "steps": steps, "step": run.step}
            row.update(score(run, sampler=sampler, steps=0 if steps == 1000 else steps))
            report["objective"].append(row)
            print(json.dumps(row), flush=True)
        if with_bpd:
            t0 = time.perf_counter()
            bpd_row = bpd.dataset_bpd(run, split="test", batch_size=64)
            bpd_row = {k: float(f"{v:.4g}") if isinstance(v, float) else v
                       for k, v in bpd_row.items()}  # fmt: skip
            row = {"objective": name, "bpd_test": bpd_row}
            row["seconds"] = round(time.perf_counter() - t0)
            report["objective"].append(row)
            print(json.dumps(row), flush=True)


def study_samplers(report: dict, score, simple, step_counts: list[int]) -> None:
    """Section 2, the samplers at several step counts (the L_simple model), reusing the rows of
    section 1 where they were already measured."""
    for steps in step_counts:
        for sampler in ("ancestral", "ddim"):
            done = next((r for r in report["objective"] if r.get("sampler") == sampler
                         and r.get("steps") == steps and r["objective"].startswith("L_simple")),
                        None)  # fmt: skip
            row = {"sampler": sampler, "steps": steps}
            row.update({k: v for k, v in done.items() if k not in row and k != "objective"}
                       if done else score(simple, sampler=sampler, steps=steps))  # fmt: skip
            report["samplers"].append(row)
            print(json.dumps(row), flush=True)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.replot:
        report = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(markdown(report))
        plot(report, Path(args.out))
        return report
    runs_dir = Path(args.runs)
    missing = [n for n in ("digits", "digits_hybrid", "digits_cond", "digits_features")
               if not (runs_dir / n).is_dir()]  # fmt: skip
    if missing:
        raise SystemExit(f"Train these runs first (commands in this file's docstring): {missing}")
    start_all = time.perf_counter()
    extractor = features.get_extractor("classifier", workdir=str(runs_dir / "digits_features"))
    simple = runs.load_run(runs_dir / "digits")
    ref = evaluate.reference_statistics(extractor, data_config=simple.config.data, split="test")
    report = new_report(args.num, ref, extractor)

    def score(run, labels_wanted=False, **kw) -> dict:
        t0 = time.perf_counter()
        images, labels = generate.generate(run, num=args.num, progress=False, seed=1, **kw)
        seconds = time.perf_counter() - t0
        row = evaluate.sample_metrics(
            images, extractor, ref, labels=labels if labels_wanted else None,
            kid_subset_size=min(ref.num_images, args.num),
        )  # fmt: skip
        row = {k: round(float(v), 4) for k, v in row.items()}
        row["sampling_s"] = round(seconds, 1)
        return row

    # 1. The objective.
    hybrid = runs.load_run(runs_dir / "digits_hybrid")
    models = {"L_simple, fixed variance": simple, "hybrid, learned variance": hybrid}
    study_objective(report, score, models, with_bpd=not args.skip_bpd)
    # 2. Samplers at several step counts (the L_simple model).
    study_samplers(report, score, simple, [int(s) for s in args.steps.split(",")])

    # 3. Classifier-free guidance on the class-conditional model, DDIM 50 steps.
    cond = runs.load_run(runs_dir / "digits_cond")
    for w in map(float, args.cfg_weights.split(",")):
        row = {"cfg_weight": w, "sampler": "ddim", "steps": 50}
        row.update(score(cond, labels_wanted=True, sampler="ddim", steps=50, cfg_scale=w))
        report["guidance"].append(row)
        print(json.dumps(row), flush=True)

    report["total_s"] = round(time.perf_counter() - start_all)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    plot(report, out)
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"{report['num_samples']} samples per row against {report['reference']}; "
             f"{report['machine']}; {report['total_s']} s in all.", "",
             "| objective | sampler | FID | KID x 10^3 | precision | recall | sampling, s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    bpd_lines = []
    for r in report["objective"]:
        if "bpd_test" in r:
            b = r["bpd_test"]
            bpd_lines.append(
                f"| {r['objective']} | {b['bpd']:.3f} | {b['prior_bpd']:.1e} | "
                f"{b['decoder_bpd']:.3f} | {b['vb_bpd']:.3f} | {r['seconds']} |"
            )
            continue
        lines.append(
            f"| {r['objective']} | {r['sampler']} {r['steps']} | {r['fid']:.3f} | "
            f"{1e3 * r['kid']:.1f} | {r['precision']:.2f} | {r['recall']:.2f} | "
            f"{r['sampling_s']} |"
        )
    if bpd_lines:
        lines += ["", "| objective | held-out bits/dim | L_T | L_0 | L_1..L_999 | time, s |",
                  "| --- | --- | --- | --- | --- | --- |", *bpd_lines]  # fmt: skip
    lines += ["", "| steps | ancestral FID | DDIM FID | ancestral s | DDIM s |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    by = {(r["sampler"], r["steps"]): r for r in report["samplers"]}
    for steps in sorted({r["steps"] for r in report["samplers"]}):
        a, d = by.get(("ancestral", steps)), by.get(("ddim", steps))
        lines.append(
            f"| {steps} | {a['fid']:.3f} | {d['fid']:.3f} | {a['sampling_s']} | {d['sampling_s']} |"
        )
    lines += ["", "| CFG weight w | requested class (feature net) | FID | precision | recall |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in report["guidance"]:
        lines.append(
            f"| {r['cfg_weight']:g} | {100 * r['class_accuracy']:.1f}% | {r['fid']:.3f} | "
            f"{r['precision']:.2f} | {r['recall']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for sampler, marker in (("ancestral", "o"), ("ddim", "s")):
        rows = sorted((r for r in report["samplers"] if r["sampler"] == sampler),
                      key=lambda r: r["steps"])  # fmt: skip
        ax1.plot([r["steps"] for r in rows], [r["fid"] for r in rows], marker=marker,
                 label="DDIM (eta 0)" if sampler == "ddim" else "ancestral")  # fmt: skip
    ax1.set(xscale="log", xlabel="sampling steps", ylabel="FID (digits features)",
            title="Samplers: FID against steps")  # fmt: skip
    ax1.legend()
    g = report["guidance"]
    w = [r["cfg_weight"] for r in g]
    ax2.plot(w, [r["class_accuracy"] for r in g], marker="o", label="requested class")
    ax2.plot(w, [r["precision"] for r in g], marker="^", label="precision")
    ax2.plot(w, [r["recall"] for r in g], marker="v", label="recall")
    ax2.set(xlabel="guidance weight w", ylabel="share", ylim=(0, 1.05),
            title="Classifier-free guidance, DDIM 50")  # fmt: skip
    fid_ax = ax2.twinx()
    fid_ax.plot(w, [r["fid"] for r in g], marker="s", color="black", linestyle="--", label="FID")
    fid_ax.set(ylabel="FID (digits features)", ylim=(0, None))
    lines = ax2.get_legend_handles_labels()
    more = fid_ax.get_legend_handles_labels()
    ax2.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    fig.suptitle(f"digits, {report['num_samples']} samples per point")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
