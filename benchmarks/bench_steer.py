"""Benchmark: the default RU→ZH steering sweep beside (number of configurations × a bare forward).

In one process, alternating runs: (a) for each (direction, split) the sweep evaluates (ru→zh on the
select and test splits, the flip zh→ru on its select and test subsets), a bare batched forward
(``model.hf(**model.encode(batch), logits_to_keep=1)``, batches of the sweep's size) over its
prompts; (b) ``steering_sweep.sweep(model)`` with its defaults (fit latents, prefix caches, the
select grid, the test-split controls, the flip direction, greedy generations: the whole call).
Prints the median seconds and sweep / Σ(configurations × bare forward) (target ≤ 1.3×), the sweep's
own phase timings, and checks that the sweep's α = 0 baseline equals the bare forward's next-token
probabilities (the prefix-cache path, many settings per forward, decoded by the streamed unembedding,
changes nothing beyond float32 rounding).

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

from llmlatent import model as model_mod  # noqa: E402
from llmlatent.experiments.steering import core as steering_core  # noqa: E402
from llmlatent.experiments.steering import demo as steering_sweep
from llmlatent.experiments.steering import plan as steering_plan  # noqa: E402

TARGET = 1.3


def held_out(
    model: model_mod.Model,
    source: str,
    target: str,
    via: str,
    n_concepts: int | None,
    seed: int,
    n_flip: int | None = 16,
) -> dict[tuple[str, str], pd.DataFrame]:
    """Return (direction, split) → the prompt frame that the sweep evaluates there (the sweep's own splits)."""
    wrong = steering_plan.default_wrong_pair(source, target, via)
    langs = list(dict.fromkeys([source, target, *wrong]))
    built = steering_core.prompt_frames(model.tokenizer, [(via, lang) for lang in langs], seed)
    frames = {lang: built[(via, lang)] for lang in langs}
    splits = steering_core.make_splits(steering_core.concept_pool(frames), seed, n_concepts, n_flip)
    name, flip = f"{source}→{target}", f"{target}→{source}"
    chosen = {
        (name, "select"): (source, splits.select),
        (name, "test"): (source, splits.test),
        (flip, "select"): (target, splits.flip_select),
        (flip, "test"): (target, splits.flip_test),
    }
    return {key: frames[lang].loc[concepts].reset_index(drop=True) for key, (lang, concepts) in chosen.items()}


def bare_chunks(model: model_mod.Model, frame: pd.DataFrame, batch_size: int) -> torch.Tensor:
    """Return last-position logits [N, V] of bare forwards over ``frame`` in the sweep's consecutive batches."""
    out = []
    texts = frame["prompt"].tolist()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            logits = model.hf(**model.encode(texts[i : i + batch_size]), logits_to_keep=1, use_cache=False).logits
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
    parser.add_argument(
        "--n-concepts",
        type=int,
        default=steering_plan.DEFAULT_N_CONCEPTS,
        help=f"the sweep's n_concepts (its default: {steering_plan.DEFAULT_N_CONCEPTS})",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="the sweep's batch_size (its default: 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    bench_lens.prepare(args)

    model = model_mod.load(args.model)
    held = held_out(model, args.source, args.target, args.via, args.n_concepts, args.seed)
    print(
        f"model {model.name}; evaluated prompts: " + ", ".join(f"{d} {sp} {len(v)}" for (d, sp), v in held.items()),
        flush=True,
    )
    kwargs = dict(
        source=args.source,
        target=args.target,
        via=args.via,
        n_concepts=args.n_concepts,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=False,
    )
    for frame in held.values():  # warm-up
        bare_chunks(model, frame.iloc[: min(len(frame), 4)], args.batch_size)

    label = {key: f"{key[0]} {key[1]}" for key in held}
    times: dict[str, list[float]] = {"bare " + label[key]: [] for key in held} | {"sweep": []}
    loads = [os.getloadavg()[0]]
    logits, result, phases = {}, None, []
    for r in range(args.repeats):
        for key, frame in held.items():
            t, logits[key] = bench_lens.timed(bare_chunks, model, frame, args.batch_size)
            times["bare " + label[key]].append(t)
        t, result = bench_lens.timed(lambda: steering_sweep.sweep(model, **kwargs))
        times["sweep"].append(t)
        phases.append(result.best.get("timings", {}))
        loads.append(os.getloadavg()[0])
        print(
            f"repeat {r + 1}/{args.repeats}: "
            + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
            + f"  load {loads[-1]:.1f}",
            flush=True,
        )

    rows = result.rows
    configs = {
        key: int(
            rows[(rows["direction"] == key[0]) & (rows["split"] == key[1])][["vector", "draw", "layer", "alpha"]]
            .drop_duplicates()
            .shape[0]
        )
        for key in held
    }
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = sum(configs[key] * med["bare " + label[key]] for key in held)
    # parity: the α = 0 baseline's p(own-language answer) equals the bare forward's
    parity = {}
    for key, frame in held.items():
        base = rows[
            (rows["direction"] == key[0])
            & (rows["split"] == key[1])
            & (rows["vector"] == "mean_difference")
            & (rows["alpha"] == 0)
        ]
        p = torch.log_softmax(logits[key], dim=-1).exp()
        own = pd.Series(
            [float(p[i, list(s)].sum()) for i, s in enumerate(frame["target_ids"])], index=frame["prompt_id"]
        )
        parity[label[key]] = float(
            np.abs(base.set_index("prompt_id")["p_source_answer"] - own.loc[base["prompt_id"]].values).max()
        )
    phase_median = {k: statistics.median([p[k] for p in phases if k in p]) for k in phases[-1]}
    out = {
        **bench_lens.environment(model),
        "command": "python benchmarks/bench_steer.py " + " ".join(argv),
        "model": model.name,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "n_concepts": args.n_concepts,
        "evaluated_prompts": {label[k]: len(v) for k, v in held.items()},
        "configurations": {label[k]: v for k, v in configs.items()},
        "bare_seconds": {label[k]: med["bare " + label[k]] for k in held},
        "sweep_seconds": med["sweep"],
        "configurations_x_bare_seconds": floor,
        "sweep_over_configurations_x_bare": med["sweep"] / floor,
        "target": TARGET,
        "target_ok": med["sweep"] / floor <= TARGET,
        "sweep_phase_seconds_median": phase_median,
        "baseline_parity_max_abs_diff": parity,
        "runs": times,
        "load_average_1min": loads,
    }
    print()
    for key in held:
        print(
            f"bare forward {label[key]}: {med['bare ' + label[key]]:7.2f} s over {len(held[key])} prompts × "
            f"{configs[key]} configurations"
        )
    print(f"configurations × bare  {floor:8.2f} s")
    print(
        f"steering_sweep.sweep   {med['sweep']:8.2f} s   sweep / (configurations × bare) = "
        f"{out['sweep_over_configurations_x_bare']:.3f} (target <= {TARGET}) -> "
        f"{'OK' if out['target_ok'] else 'MISSED'}"
    )
    print("sweep phases (median s): " + ", ".join(f"{k} {v:.1f}" for k, v in phase_median.items()))
    print("α = 0 baseline vs bare forward, max |Δp|: " + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))
    print(f"load average (1 min) during the runs: {', '.join(f'{x:.1f}' for x in loads)}")
    bench_lens.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
