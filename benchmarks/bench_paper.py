"""Benchmark: the paper's latents path (import, sweep from a store) at Llama-2-7B's shape, and the geometry step.

Three parts, each measured once in this process (throughputs and seconds, not a timed test):

* ``import``: a synthetic 1 GB ``.pt`` in the dataset's layout (``7b_fr_zh_latents.pt``, float32
  ``[n, 32, 4096]``, beside its ``_dataset.csv``) imported into a latent store with the head alone of a
  fake Llama-2-7B folder (config.json, a random 32,000 × 4,096 head and final norm in safetensors, the real
  Llama-2 tokenizer of the test fixtures); target ≥ 200 MB/s (file bytes / import seconds).
* ``sweep``: 120 prompts × 32 layers imported the same way, then ``sweep --from-latents`` (head load,
  lens over the store, summary, figures, record); target ≤ 20 s, the head load included.
* ``geometry``: ``geometry --from-latents`` on the embedded default's fr→zh store (collected first into a
  temporary folder unless ``--store`` names one): head load and the experiment.

    python benchmarks/bench_paper.py --json results/bench_paper.json            # all three parts
    python benchmarks/bench_paper.py --part sweep
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from llmlatent import tasks  # noqa: E402

SHAPE = {"n_layers": 32, "hidden": 4096, "vocab": 32000}  # Llama-2-7B
TARGETS = {"import_mb_per_s": 200.0, "sweep_seconds": 20.0}


def fake_llama2_head(folder: Path, seed: int = 0) -> Path:
    """Return a folder that loads as Llama-2-7B's head: config.json, model.safetensors (norm + random head),
    tokenizer (the real Llama-2 vocabulary of tests/real_tokenizers.py)."""
    import real_tokenizers
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        vocab_size=SHAPE["vocab"],
        hidden_size=SHAPE["hidden"],
        intermediate_size=11008,
        num_hidden_layers=SHAPE["n_layers"],
        num_attention_heads=32,
        num_key_value_heads=32,
        tie_word_embeddings=False,
    )
    config.save_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "model.norm.weight": 1.0 + 0.1 * torch.randn(SHAPE["hidden"], generator=g),
        "lm_head.weight": 0.02 * torch.randn(SHAPE["vocab"], SHAPE["hidden"], generator=g),
    }
    save_file(tensors, folder / "model.safetensors")
    real_tokenizers.load("llama2").save_pretrained(folder)
    return folder


def write_pair(folder: Path, tokenizer: object, n: int, seed: int = 0) -> Path:
    """Return a ``7b_fr_zh_latents.pt`` of ``n`` random prompts' latents beside its ``_dataset.csv`` (the fr→zh
    prompts, repeated to ``n`` rows)."""
    df = tasks.build("translation", "fr", "zh", tokenizer, seed=seed).df
    df = df.iloc[np.arange(n) % len(df)].reset_index(drop=True)
    frame = pd.DataFrame(
        {
            "prompt": df["prompt"],
            "out_token_id": [str(list(ids)) for ids in df["target_ids"]],
            "out_token_str": df["tgt_word"],
            "latent_token_id": [str(list(ids)) for ids in df["english_ids"]],
            "latent_token_str": df["en_word"],
            "in_token_str": df["src_word"],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "7b_fr_zh_dataset.csv", index=False)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, SHAPE["n_layers"], SHAPE["hidden"], generator=g) * 3.0
    torch.save(latents, folder / "7b_fr_zh_latents.pt")
    return folder / "7b_fr_zh_latents.pt"


def bench_import(tmp: Path, head_dir: Path, size_gb: float) -> dict:
    """Return the import's bytes, seconds and MB/s for a synthetic ``.pt`` of about ``size_gb`` GB."""
    from llmlatent.latents import paper
    from llmlatent.model import load_unembedding

    head = load_unembedding(head_dir)
    n = max(1, round(size_gb * 1e9 / (SHAPE["n_layers"] * SHAPE["hidden"] * 4)))
    pt = write_pair(tmp / "import", head.tokenizer, n)
    size = pt.stat().st_size
    started, cpu = time.perf_counter(), time.process_time()
    store = paper.import_paper(pt, head, tmp / "import-store", progress=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "n_prompts": len(store),
        "bytes": size,
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / 1e6 / seconds, 1),
        "timed_cpu_seconds": round(cpu, 2),  # the rest of the wall time is waiting: disk (fsync) or other jobs
    }


def bench_sweep(tmp: Path, head_dir: Path, n: int = 120) -> dict:
    """Return the seconds of a sweep from a 7B-shaped imported store of ``n`` prompts (head load included)."""
    from llmlatent.experiments import runs
    from llmlatent.experiments.sweep import SweepSettings
    from llmlatent.latents import paper
    from llmlatent.model import load_unembedding

    pt = write_pair(tmp / "sweep", load_unembedding(head_dir).tokenizer, n, seed=1)
    store = paper.import_paper(pt, load_unembedding(head_dir), tmp / "sweep-store", progress=False)
    started, cpu = time.perf_counter(), time.process_time()
    head = load_unembedding(head_dir)
    head_seconds = time.perf_counter() - started
    record = runs.run(SweepSettings(from_latents=str(store.path), progress=False), head, tmp / "sweep-out")
    total = time.perf_counter() - started
    return {
        "timed_cpu_seconds": round(time.process_time() - cpu, 2),
        "n_prompts": len(store),
        "n_layers": store.n_layers,
        "head_load_seconds": round(head_seconds, 2),
        "lens_seconds": record["sweep_seconds"],
        "seconds": round(total, 2),
    }


def bench_geometry(tmp: Path, store: str | None) -> dict:
    """Return the seconds of the geometry step on the embedded default's fr→zh store (head load included)."""
    from llmlatent import latents, model
    from llmlatent.experiments import runs
    from llmlatent.experiments.geometry import GeometrySettings

    collect_seconds = None
    if store is None:
        started = time.perf_counter()
        m = model.load()
        store = str(tmp / "fr-zh")
        latents.collect(m, tasks.build("translation", "fr", "zh", m.tokenizer), store, progress=False)
        collect_seconds = round(time.perf_counter() - started, 2)
        del m
    started, cpu = time.perf_counter(), time.process_time()
    head = model.load_unembedding()
    record = runs.run(GeometrySettings(from_latents=store, progress=False), head, tmp / "geometry-out")
    return {
        "timed_cpu_seconds": round(time.process_time() - cpu, 2),
        "collect_seconds": collect_seconds,
        "seconds": round(time.perf_counter() - started, 2),
        "phases": record["timings"],
        "n_prompts": record["n_prompts"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts, print one JSON line each (and write them with --json); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("import", "sweep", "geometry", "all"), default="all")
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of the synthetic .pt of the import part")
    parser.add_argument("--store", default=None, help="the embedded default's fr→zh store for the geometry part")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    results = {
        "machine": f"{os.cpu_count()} cores, 1-min load {os.getloadavg()[0]:.1f} at start",
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory(prefix="bench-paper-") as tmp:
        tmp = Path(tmp)
        head_dir = fake_llama2_head(tmp / "llama-2-7b-head") if args.part in ("import", "sweep", "all") else None
        for part, run in (
            ("import", lambda: bench_import(tmp, head_dir, args.size_gb)),
            ("sweep", lambda: bench_sweep(tmp, head_dir)),
            ("geometry", lambda: bench_geometry(tmp, args.store)),
        ):
            if args.part in (part, "all"):
                cpu = time.process_time()
                results[part] = run()
                # CPU seconds of this process (all threads): on a shared machine, CPU seconds / threads is what the
                # wall time of an idle machine would be at best
                results[part]["cpu_seconds"] = round(time.process_time() - cpu, 2)
                print(json.dumps({part: results[part]}), flush=True)
    results["targets"] = TARGETS
    results["machine"] += f", {os.getloadavg()[0]:.1f} at the end"
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
