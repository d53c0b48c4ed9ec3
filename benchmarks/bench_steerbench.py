"""Benchmark: the steering benchmark (every ordered pair of five languages, four methods) vs (settings × bare forward).

In one process, alternating runs: (a) for every pair and split the benchmark evaluates, a bare batched
forward (``model.hf(**model.encode(batch), logits_to_keep=1)``, batches of the benchmark's size) over
its prompts; (b) :func:`llmlatent.experiments.steering.bench.bench.compute` with the default settings (the
whole call: prompts, language means, the select grid of methods × layers × α tiled on one prefix cache
per batch with greedy generations, the test split's chosen settings and controls, the report). The
first repeat collects the fit latents into a temporary store folder; later repeats reuse them, as a
rerun does. Prints the median seconds, benchmark / Σ(settings × bare forward) (target ≤ 0.3) and checks
that the benchmark's α = 0 baseline equals the bare forward's p(own-language answer).

    python benchmarks/bench_steerbench.py --repeats 2 --json results/bench_steerbench.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_lens  # noqa: E402
from bench_steer import bare_chunks  # noqa: E402

from llmlatent import model as model_mod  # noqa: E402
from llmlatent.experiments.steering.bench import bench  # noqa: E402
from llmlatent.experiments.steering.bench.plan import SteerBenchSettings  # noqa: E402

TARGET = 0.3


def evaluated(model: model_mod.Model, s: SteerBenchSettings) -> dict[tuple[str, str, str], pd.DataFrame]:
    """Return (source, target, split) → the prompts the benchmark evaluates there (its own frames and splits)."""
    frames, splits = bench.prompt_frames(model, s)
    return {
        (a, b, split): frames[(s.via(a, b), a)].loc[splits[split]].reset_index(drop=True)
        for a, b in s.pairs()
        for split in ("select", "test")
    }


def parity(rows: pd.DataFrame, held: dict, logits: dict) -> float:
    """Return max |p_source(α = 0) − the bare forward's p(own-language answer)| over every pair and split."""
    worst = 0.0
    for (a, b, split), frame in held.items():
        part = rows[(rows["source"] == a) & (rows["target"] == b) & (rows["split"] == split)]
        base = part[part["method"] == "baseline"].set_index("prompt_id")["p_source"]
        p = torch.softmax(logits[(a, b, split)], dim=-1)
        own = pd.Series([float(p[i, list(x)].sum()) for i, x in enumerate(frame["target_ids"])], frame["prompt_id"])
        worst = max(worst, float((base - own.loc[base.index]).abs().max()))
    return worst


def benchmark(model: model_mod.Model, s: SteerBenchSettings, repeats: int, log: Callable[[str], None]) -> dict:
    """Return the timings, the ratio and the baseline parity of ``repeats`` alternating runs of (a) and (b)."""
    held = evaluated(model, s)
    times: dict[str, list[float]] = {"bare": [], "bench": []}
    each: dict[tuple, list[float]] = {key: [] for key in held}
    loads, logits, result, phases = [os.getloadavg()[0]], {}, None, []
    with tempfile.TemporaryDirectory(prefix="llmlatent-bench-steerbench-") as tmp:
        s = s.replace(latents_dir=tmp)
        for r in range(repeats):
            bare = 0.0
            for key, frame in held.items():
                t, logits[key] = bench_lens.timed(bare_chunks, model, frame, s.batch_size)
                each[key].append(t)
                bare += t
            times["bare"].append(bare)
            t, result = bench_lens.timed(lambda: bench.compute(model, s))
            times["bench"].append(t)
            phases.append(result.record["timings"])
            loads.append(os.getloadavg()[0])
            log(f"repeat {r + 1}/{repeats}: bare {bare:.1f}s, bench {t:.1f}s, load {loads[-1]:.1f}")
    rows = result.rows
    keys = ["method", "draw", "layer", "alpha"]
    settings = {
        key: len(
            rows[(rows["source"] == key[0]) & (rows["target"] == key[1]) & (rows["split"] == key[2])][
                keys
            ].drop_duplicates()
        )
        for key in held
    }
    floor = sum(settings[k] * statistics.median(each[k]) for k in held)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "pairs": len(s.pairs()),
        "settings_evaluated": sum(settings.values()),
        "evaluated_prompts": sum(map(len, held.values())),
        "bare_seconds_all_prompts": med["bare"],
        "settings_x_bare_seconds": floor,
        "bench_seconds": med["bench"],
        "bench_seconds_first_run": times["bench"][0],
        "bench_over_settings_x_bare": med["bench"] / floor,
        "target": TARGET,
        "target_ok": med["bench"] / floor <= TARGET,
        "phase_seconds": phases,
        "baseline_parity_max_abs_diff": parity(rows, held, logits),
        "runs": times,
        "load_average_1min": loads,
        "wins": result.record["wins"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench_lens.common_args(parser)
    parser.add_argument("--langs", default="en,fr,de,ru,zh")
    parser.add_argument("--n-concepts", type=int, default=None, help="the benchmark's n_concepts (default: its own)")
    parser.add_argument("--layers", default=None, help="the benchmark's layers, e.g. 8,12 (default: its own)")
    parser.add_argument("--alphas", default=None, help="the benchmark's alphas, e.g. 2,4 (default: its own)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default: its own)")
    args = parser.parse_args(argv)
    bench_lens.prepare(args)
    model = model_mod.load(args.model)
    extra = {
        "n_concepts": args.n_concepts,
        "layers": args.layers and tuple(int(x) for x in args.layers.split(",")),
        "alphas": args.alphas and tuple(float(x) for x in args.alphas.split(",")),
        "max_new_tokens": args.max_new_tokens,
    }
    extra = {k: v for k, v in extra.items() if v is not None}
    s = SteerBenchSettings(langs=tuple(args.langs.split(",")), progress=False, **extra)
    out = {**bench_lens.environment(model), "command": "python benchmarks/bench_steerbench.py " + " ".join(argv)}
    out.update(benchmark(model, s, args.repeats, lambda msg: print(msg, flush=True)))
    print(
        f"\n{out['pairs']} pairs, {out['settings_evaluated']} (pair, split, setting) cells over "
        f"{out['evaluated_prompts']} prompts\nsettings × bare forward {out['settings_x_bare_seconds']:8.1f} s\n"
        f"steer-bench compute      {out['bench_seconds']:8.1f} s (first run, collecting the means: "
        f"{out['bench_seconds_first_run']:.1f} s)   ratio {out['bench_over_settings_x_bare']:.3f} "
        f"(target <= {TARGET}) -> {'OK' if out['target_ok'] else 'MISSED'}\n"
        f"α = 0 baseline vs bare forward, max |Δp|: {out['baseline_parity_max_abs_diff']:.1e}\n"
        f"load average (1 min): {', '.join(f'{x:.1f}' for x in out['load_average_1min'])}"
    )
    bench_lens.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
