"""Benchmark: the default RU→ZH steering sweep beside (number of configurations × a bare forward).

In one process, alternating runs: (a) for each direction of the sweep, a bare batched forward
(``model.hf(**model.encode(batch), logits_to_keep=1)``, the sweep's batches) over its held-out
prompts; (b) ``steering.sweep(model)`` with its defaults (fit latents, prefix caches, every
steered configuration, controls, flip direction, greedy generations: the whole call). Prints the
median seconds and sweep / Σ_direction(configurations × bare forward) (target ≤ 1.3×), the
sweep's own phase timings, and checks that the sweep's α = 0 baseline equals the bare forward's
next-token probabilities (the prefix-cache path changes nothing).

    python benchmarks/bench_steer.py --json results/bench_steer.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_lens  # noqa: E402

from llmlatent import steering, steering_sweep, tasks  # noqa: E402
from llmlatent import model as model_mod  # noqa: E402

TARGET = 1.3


def held_out(model: model_mod.Model, source: str, target: str, via: str, n_concepts: int | None,
             seed: int, n_flip: int | None = 30) -> dict[str, pd.DataFrame]:
    """Return direction name → the held-out prompt frame that the sweep steers (same split as the sweep)."""
    frames = {lang: tasks.build("translation", via, lang, model.tokenizer, seed=seed).df.set_index("concept", drop=False)
              for lang in (source, target)}
    _, test = steering_sweep.split_concepts(list(set(frames[source].index) & set(frames[target].index)), seed, n_concepts)
    flip = steering_sweep.choose_flip_concepts(test, seed, n_flip)  # the flip direction steers a subset
    return {f"{source}→{target}": frames[source].loc[test].reset_index(drop=True),
            f"{target}→{source}": frames[target].loc[flip].reset_index(drop=True)}


def bare_chunks(model: model_mod.Model, frame: pd.DataFrame, batch_size: int) -> torch.Tensor:
    """Return last-position logits [N, V] of bare forwards over ``frame`` in the sweep's consecutive batches."""
    out = []
    texts = frame["prompt"].tolist()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            logits = model.hf(**model.encode(texts[i:i + batch_size]), logits_to_keep=1, use_cache=False).logits
            out.append(logits[:, -1].float())
    bench_lens.sync(model)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench_lens.common_args(parser)
    parser.add_argument("--source", default="ru")
    parser.add_argument("--target", default="zh")
    parser.add_argument("--via", default="fr")
    parser.add_argument("--n-concepts", type=int, default=120, help="the sweep's n_concepts (its default: 120)")
    parser.add_argument("--batch-size", type=int, default=64, help="the sweep's batch_size (its default: 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    bench_lens.prepare(args)

    model = model_mod.load(args.model)
    held = held_out(model, args.source, args.target, args.via, args.n_concepts, args.seed)
    print(f"model {model.name}; held-out prompts: " + ", ".join(f"{k} {len(v)}" for k, v in held.items()), flush=True)
    kwargs = dict(source=args.source, target=args.target, via=args.via, n_concepts=args.n_concepts, seed=args.seed,
                  batch_size=args.batch_size, progress=False)
    for frame in held.values():  # warm-up
        bare_chunks(model, frame.iloc[: min(len(frame), 4)], args.batch_size)

    times: dict[str, list[float]] = {"bare_" + name: [] for name in held} | {"sweep": []}
    loads = [os.getloadavg()[0]]
    logits, result, phases = {}, None, []
    for r in range(args.repeats):
        for name, frame in held.items():
            t, logits[name] = bench_lens.timed(bare_chunks, model, frame, args.batch_size)
            times["bare_" + name].append(t)
        t, result = bench_lens.timed(lambda: steering.sweep(model, **kwargs))
        times["sweep"].append(t)
        phases.append(result.best.get("timings", {}))
        loads.append(os.getloadavg()[0])
        print(f"repeat {r + 1}/{args.repeats}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
              + f"  load {loads[-1]:.1f}", flush=True)

    rows = result.rows
    configs = {name: int(rows[rows["direction"] == name][["vector", "draw", "layer", "alpha"]].drop_duplicates().shape[0])
               for name in held}
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = sum(configs[name] * med["bare_" + name] for name in held)
    # parity: the α = 0 baseline's p(own-language answer) equals the bare forward's
    parity = {}
    for name, frame in held.items():
        base = rows[(rows["direction"] == name) & (rows["vector"] == "mean_difference") & (rows["alpha"] == 0)]
        p = torch.log_softmax(logits[name], dim=-1).exp()
        own = pd.Series([float(p[i, list(s)].sum()) for i, s in enumerate(frame["target_ids"])], index=frame["prompt_id"])
        parity[name] = float(np.abs(base.set_index("prompt_id")["p_source_answer"] - own.loc[base["prompt_id"]].values).max())
    phase_median = {k: statistics.median([p[k] for p in phases if k in p]) for k in phases[-1]}
    out = {
        **bench_lens.environment(model),
        "command": "python benchmarks/bench_steer.py " + " ".join(argv),
        "model": model.name, "repeats": args.repeats, "batch_size": args.batch_size, "n_concepts": args.n_concepts,
        "held_out_prompts": {k: len(v) for k, v in held.items()}, "configurations": configs,
        "bare_seconds": {name: med["bare_" + name] for name in held},
        "sweep_seconds": med["sweep"], "configurations_x_bare_seconds": floor,
        "sweep_over_configurations_x_bare": med["sweep"] / floor, "target": TARGET,
        "target_ok": med["sweep"] / floor <= TARGET,
        "sweep_phase_seconds_median": phase_median,
        "baseline_parity_max_abs_diff": parity,
        "runs": times, "load_average_1min": loads,
    }
    print()
    for name in held:
        print(f"bare forward {name}: {med['bare_' + name]:7.2f} s over {len(held[name])} prompts × {configs[name]} configurations")
    print(f"configurations × bare  {floor:8.2f} s")
    print(f"steering.sweep         {med['sweep']:8.2f} s   sweep / (configurations × bare) = "
          f"{out['sweep_over_configurations_x_bare']:.3f} (target <= {TARGET}) -> {'OK' if out['target_ok'] else 'MISSED'}")
    print("sweep phases (median s): " + ", ".join(f"{k} {v:.1f}" for k, v in phase_median.items()))
    print("α = 0 baseline vs bare forward, max |Δp|: " + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))
    print(f"load average (1 min) during the runs: {', '.join(f'{x:.1f}' for x in loads)}")
    bench_lens.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
