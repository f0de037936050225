"""Markdown tables from the suite's JSON files (for experiments/BENCHMARKS.md).

    python -m experiments.benchmarks.report experiments/results/benchmarks/*.json

One row per benchmark of each `run` result: our median step time with its min and max, images/s,
XLA's GFLOP per step, the achieved GFLOP/s and share of the peak, compile time, the PyTorch peer's
time in each layout and the ratio (our images/s over PyTorch's fastest layout), the load, and
the command. `fastpaths` files print their own table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = (
    "| model, batch | benchmark | ours: median step, ms (min-max) | img/s | XLA GFLOP/step | "
    "GFLOP/s (% of peak) | compile, s | PyTorch NCHW, ms | PyTorch channels_last, ms | "
    "ratio | other load, cores | versions |"
)


def _ms(stats: dict | None) -> str:
    if not stats:
        return ""
    return f"{stats['median_s'] * 1e3:.0f} ({stats['min_s'] * 1e3:.0f}-{stats['max_s'] * 1e3:.0f})"


def _versions(record: dict, peer: dict) -> str:
    env = record["environment"]
    out = f"jax {env['versions'].get('jax')}, py {env['python']}"
    any_peer = next((p for p in peer.values() if isinstance(p, dict) and "versions" in p), None)
    if any_peer:
        out += f", torch {any_peer['versions']['torch']}"
    return out


def rows(record: dict) -> list[str]:
    results = record["results"]
    peer = results.get("peer") or {}
    ratios = record.get("ratio_vs_peer", {})
    out = []
    for name, r in results.items():
        if name in ("peer", "scaling", "cache") or "step" not in r:
            continue
        flops = r.get("flops_per_step_xla")
        achieved = r.get("achieved_flops_per_s")
        util = r.get("utilisation")
        perf = f"{achieved / 1e9:.1f}" if achieved else ""
        if util:
            perf += f" ({100 * util:.0f}%)"
        peer_cells = []
        for layout in ("nchw", "channels_last"):
            p = peer.get(layout, {})
            peer_cells.append(_ms(p.get("results", {}).get(name, {}).get("step")))
        ratio = ratios.get(name, {}).get("ratio")
        others = [r["step"].get("others_cores")]
        others += [
            p["results"][name]["step"].get("others_cores")
            for p in peer.values()
            if isinstance(p, dict) and name in p.get("results", {})
        ]
        others_text = "/".join("?" if o is None else f"{o:.2f}" for o in others)
        compile_s = r["compile"]["lower_s"] + r["compile"]["compile_s"]
        cells = [
            f"{record['model']}, {record['batch']}",
            name + (f" x{r['steps_per_dispatch']}" if r.get("steps_per_dispatch", 1) > 1 else ""),
            _ms(r["step"]),
            f"{r['images_per_s']:.1f}" if r.get("images_per_s") else "",
            f"{flops / 1e9:.1f}" if flops else "",
            perf,
            f"{compile_s:.1f}",
            *peer_cells,
            f"**{ratio:.2f}**" if ratio else "",
            others_text,
            _versions(record, peer),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def render(records: list[dict]) -> str:
    lines = [HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
    for record in records:
        lines += rows(record)
    lines.append("")
    for record in records:
        lines.append(f"- `{record['command']}` ({record['time']})")
    return "\n".join(lines)


def cache_table(data: dict) -> str:
    """compile_cache: lowering, compilation (or loading) and the first step of each mode."""
    lines = ["| mode | lowering, s | compile or load, s | first step, s | process wall, s |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for mode, r in data["modes"].items():
        if "error" in r:
            lines.append(f"| {mode} | failed | | | |")
            continue
        lines.append(f"| {mode} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
                     f"{r['first_step_s']:.1f} | {r['process_wall_s']:.1f} |")  # fmt: skip
    lines.append(f"\n{data['model']}, batch {data['batch']}; same loss in every mode: "
                 f"{data['same_loss']}")  # fmt: skip
    return "\n".join(lines)


def scaling_table(data: dict) -> str:
    """scaling: step time and agreement with one device, per simulated device count."""
    lines = ["| devices | step, ms (min-max) | max abs. loss difference | max abs. parameter "
             "difference | same as 1 device |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in data["runs"]:
        lines.append(f"| {r['devices']} | {_ms(r['step'])} | {r['max_abs_loss_diff']:.1e} | "
                     f"{r['max_abs_param_diff']:.1e} | {r['same_as_1_device']} |")  # fmt: skip
    lines.append(f"\n{data['model']}, global batch {data['batch']}, {data['steps']} steps; "
                 f"{data['note']}")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    records = []
    for file in args.files:
        data = json.loads(Path(file).read_text())
        if "records" in data:  # a fastpaths file
            print(data["table"], end="\n\n")
        elif "modes" in data:  # a compile_cache file
            print(cache_table(data), end="\n\n")
        elif "runs" in data:  # a scaling file
            print(scaling_table(data), end="\n\n")
        else:
            records.append(data)
    if records:
        print(render(records))


if __name__ == "__main__":
    main()
