"""Benchmark: a sweep with 5 latent languages beside the same sweep with English alone (target ≤ 1.05×).

The latent languages add one token-set sum each to the streamed unembedding (:func:`llmlatent.lens.decode.decode`):
a gather of a few dozen logits per row, next to the matmul over the whole vocabulary that every row pays
anyway. In one process, on the same prompts and model, the two sweeps alternate ``--repeats`` times (so that
load changes on a shared machine hit both alike), each timed as a whole ``lens.sweep`` (forward + decode), and
then, to isolate the decode, on latents collected once (``lens.decode_frame`` of the stored residuals).
The token sets are built beforehand (``latent_langs.add_latent_sets``): a one-off of milliseconds per prompt.

    python benchmarks/bench_latent.py --json latent.json            # embedded default, fr→zh, 64 prompts
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from llmlatent import capture, tasks
from llmlatent.latent_sets import add_latent_sets
from llmlatent.lens import last_token as lens
from llmlatent.lens.base import of as lens_of

LATENT = ("en", "fr", "de", "ru", "zh")  # the paper's five: 4 sets beyond English (zh: the target's own)


def _timed(fn, *args) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def benchmark(model, n: int, repeats: int, batch_size: int = 16, latent: tuple[str, ...] = LATENT) -> dict:  # noqa: ANN001
    """Return the timings (seconds, medians) and ratios of the two sweeps and of their decodes alone."""
    one = tasks.build("translation", "fr", "zh", model.tokenizer, n=n, seed=0)
    five = add_latent_sets(one, latent, model.tokenizer)
    run = lambda ps: lens.sweep(model, ps, batch_size=batch_size, progress=False)  # noqa: E731
    run(one)  # warm-up
    sweeps = {"one": [], "five": []}
    for i in range(repeats):
        for name in ("one", "five") if i % 2 == 0 else ("five", "one"):
            sweeps[name].append(_timed(run, one if name == "one" else five))
    with torch.inference_mode():
        latents, _ = capture.forward_last(model, one.prompts)
    decode = lambda ps: lens.decode_frame(lens_of(model), latents, ps.df, model.tokenizer)  # noqa: E731
    decodes = {"one": [], "five": []}
    for i in range(repeats):
        for name in ("one", "five") if i % 2 == 0 else ("five", "one"):
            decodes[name].append(_timed(decode, one if name == "one" else five))
    med = {
        f"{kind}_{k}": statistics.median(v)
        for kind, d in (("sweep", sweeps), ("decode", decodes))
        for k, v in d.items()
    }
    return {
        "model": model.name,
        "n_prompts": len(one),
        "latent": list(latent),
        "repeats": repeats,
        **{k: round(v, 4) for k, v in med.items()},
        "sweep_five_over_one": round(med["sweep_five"] / med["sweep_one"], 4),
        "decode_five_over_one": round(med["decode_five"] / med["decode_one"], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="prompts (fr→zh)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    from llmlatent import model as model_mod

    m = model_mod.load()
    result = benchmark(m, args.n, args.repeats)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
