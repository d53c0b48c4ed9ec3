"""Benchmark: ``lens.sweep`` beside the bare batched forward (the floor) and a seed-style per-prompt lens.

In one process, alternating runs on the same prompts and model (by default batch by batch: each of
the sweep's length-ordered batches is timed as (a) and as (b), in alternating order, and the totals
summed, so that load changes on a shared machine hit both alike; ``--interleave pass`` alternates
whole passes instead):

(a) bare   — ``model.hf(**model.encode(batch), logits_to_keep=1)`` under ``inference_mode``, with the
             sweep's batching and length ordering: the cheapest pass that reads the model once;
(b) sweep  — ``lens.sweep`` (batch mode: called on each batch's prompts, so it also pays its per-call
             set-up once per batch);
(c) seed   — the seed repository's method, written out here: one prompt at a time,
             ``output_hidden_states=True``, every layer's hidden state at every position passed
             through the final norm and unembedding (and softmax), then the last position read.
             ``hidden_states[-1]`` is already normalised in HF, so the last block's raw output is
             taken from a forward hook instead.

(b) and (c) must agree on p_target, p_english and entropy for every layer (parity). (c) is very
slow, so it runs on ``--seed-n`` prompts and its time is extrapolated per prompt to ``--n``
(reported as such). The peak memory of the sweep is measured in a fresh subprocess: on GPU
``torch.cuda.max_memory_allocated`` (weights + what the sweep allocates); on CPU its analogue, the
model's bytes + the growth of peak RSS during the sweep (/proc/self/status VmHWM, reset through
/proc/self/clear_refs after loading), with the whole process's peak RSS reported beside it.

GPU mode: ``--synthetic llama2-7b`` builds a Llama-2-7B-shaped model (hidden 4096, 32 layers,
32 heads, intermediate 11008, vocab 32000) from a config with random bfloat16 weights directly
on the device, with seeded random-token prompts of 50–70 tokens, batch 64; ``--tiny`` is the same
with a tiny config (CPU check). Prompts are space-separated token ids read by a trivial id
tokenizer, so the real ``lens.sweep`` runs unchanged.

    python benchmarks/bench_lens.py --json results/bench_lens.json
    python benchmarks/bench_lens.py --synthetic llama2-7b --json results/bench_lens_gpu.json
    python benchmarks/bench_lens.py --tiny --n 16 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmlatent import capture, tasks
from llmlatent import model as model_mod  # noqa: E402
from llmlatent.lens import last_token as lens
from llmlatent.metrics import LOG2  # noqa: E402

METRICS = ("p_target", "p_english", "entropy")
# max abs difference allowed between sweep and seed-style (probabilities; entropy in bits): batched vs
# one-prompt forwards differ by float rounding only; bfloat16 rounds activations to 8 mantissa bits
PARITY_TOL = {torch.float32: 1e-4, torch.float64: 1e-6, torch.bfloat16: 5e-2, torch.float16: 5e-2}
SYNTHETIC = {
    "llama2-7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        vocab_size=32000,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
    ),
}


# ------------------------------------------------------------------ synthetic model + prompts


class IdTokenizer:
    """A trivial tokenizer for random-token prompts: text = space-separated token ids; pads on the left."""

    padding_side = "left"
    pad_token_id = 0

    def __call__(self, texts, return_tensors=None, padding=False):  # noqa: ANN001, ANN204
        single = isinstance(texts, str)
        rows = [[int(t) for t in text.split()] for text in ([texts] if single else texts)]
        if return_tensors != "pt":
            return {"input_ids": rows[0] if single else rows}
        width = max(len(r) for r in rows)
        if not padding and len({len(r) for r in rows}) > 1:
            raise ValueError("rows of different lengths need padding=True")
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids) -> str:  # noqa: ANN001
        return " ".join(f"<{int(i)}>" for i in ids)


def synthetic_model(shape: str, device: str, dtype: torch.dtype, seed: int = 0) -> model_mod.Model:
    """Return a Model around a randomly initialised Llama of the named shape, built directly on ``device``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llmlatent.adapter import adapter_for

    torch.manual_seed(seed)
    config = LlamaConfig(**SYNTHETIC[shape], tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    hf.eval().requires_grad_(False)
    return model_mod.Model(hf=hf, tokenizer=IdTokenizer(), adapter=adapter_for(hf), name=f"synthetic-{shape}")


def synthetic_prompts(vocab: int, n: int, seed: int = 0, lengths: tuple[int, int] = (50, 70)) -> pd.DataFrame:
    """Return a prompt frame of ``n`` seeded random-token prompts with random 1–3-token target/English sets."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        ids = rng.integers(3, vocab, size=int(rng.integers(lengths[0], lengths[1] + 1)))
        target = sorted({int(t) for t in rng.integers(3, vocab, size=int(rng.integers(1, 4)))})
        english = sorted({int(t) for t in rng.integers(3, vocab, size=int(rng.integers(1, 4)))} - set(target)) or [3]
        records.append(
            {"prompt_id": i, "prompt": " ".join(map(str, ids)), "target_ids": target, "english_ids": english}
        )
    return pd.DataFrame(records)


def common_args(parser: argparse.ArgumentParser) -> None:
    """Add the options every benchmark script shares: --model, --repeats, --threads, --json."""
    parser.add_argument("--model", default=None, help="HF id or local path (default: the embedded gemma-3-270m)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the results here")


def prepare(args: argparse.Namespace) -> None:
    """Quieten transformers and apply ``--threads`` before anything is loaded."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.threads:
        torch.set_num_threads(args.threads)


def write_json(path: str | None, result: dict) -> None:
    """Write ``result`` to ``path`` (if given) as indented JSON and say so."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1, ensure_ascii=False))
        print(f"wrote {path}")


def setup(args: argparse.Namespace) -> tuple[model_mod.Model, pd.DataFrame]:
    """Return (model, prompt frame) for the command-line options."""
    shape = "tiny" if args.tiny else args.synthetic
    if shape:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, args.dtype) if args.dtype else model_mod.default_dtype(device)
        model = synthetic_model(shape, device, dtype, seed=args.seed)
        return model, synthetic_prompts(SYNTHETIC[shape]["vocab_size"], args.n or 256, seed=args.seed)
    model = model_mod.load(args.model, device=args.device, dtype=args.dtype)
    src, tgt = args.pair.split("-")
    prompts = tasks.build("translation", src, tgt, model.tokenizer, n=args.n, seed=args.seed)
    return model, prompts.df


# ------------------------------------------------------------------ the three methods


def sync(model: model_mod.Model) -> None:
    """Wait for queued accelerator work (timings on GPU)."""
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def bare_forward(model: model_mod.Model, texts: list[str], batch_size: int) -> None:
    """Run the floor: batched forwards with last-position logits only, in the sweep's length order."""
    with torch.inference_mode():
        for idx in capture.batched(capture.length_order(model, texts), batch_size):
            model.hf(**model.encode([texts[i] for i in idx]), logits_to_keep=1, use_cache=False)
    sync(model)


def run_sweep(model: model_mod.Model, frame: pd.DataFrame, batch_size: int) -> pd.DataFrame:
    """Return ``lens.sweep``'s rows of a prompt frame (synchronised, for timing)."""
    rows = lens.sweep(model, tasks.PromptSet(frame), batch_size=batch_size, progress=False)
    sync(model)
    return rows


def seed_style(model: model_mod.Model, frame: pd.DataFrame) -> pd.DataFrame:
    """Return prompt_id, layer, p_target, p_english, entropy the seed repository's way (one prompt at a time).

    Every layer's residual at every position goes through the final norm, the unembedding and a
    softmax (as the seed did); the metrics are then read at the last position (in float64, so the
    reference itself adds no float32 summation error over the vocabulary).
    """
    unembedding = model.unembedding
    last_block = model.adapter.blocks[-1]
    records = []
    for row in frame.itertuples(index=False):
        enc = model.tokenizer(row.prompt, return_tensors="pt")
        enc = {key: value.to(model.device) for key, value in enc.items()}
        raw: list[torch.Tensor] = []
        handle = last_block.register_forward_hook(lambda _m, _a, out, raw=raw: raw.append(capture.block_output(out)))
        try:
            with torch.inference_mode():
                out = model.hf(**enc, output_hidden_states=True, use_cache=False)
        finally:
            handle.remove()
        hidden = list(out.hidden_states[1:])  # block outputs; [-1] is normalised in HF families
        hidden[-1] = raw[-1]
        with torch.inference_mode():
            for layer, h in enumerate(hidden):
                logits = unembedding(h[0])  # [positions, vocab]: every position, as the seed did
                torch.softmax(logits, dim=-1)  # every position's distribution, as the seed computed it
                lp = torch.log_softmax(logits[-1].double(), dim=-1)
                p = lp.exp()
                records.append(
                    {
                        "prompt_id": row.prompt_id,
                        "layer": layer,
                        "p_target": float(p[list(row.target_ids)].sum()),
                        "p_english": float(p[list(row.english_ids)].sum()),
                        "entropy": float(-(p * lp).sum() / LOG2),
                    }
                )
        sync(model)
    return pd.DataFrame(records)


def parity(rows: pd.DataFrame, seed_rows: pd.DataFrame) -> dict[str, float]:
    """Return the max abs difference per metric between sweep rows and seed-style rows (same prompts)."""
    merged = seed_rows.merge(rows, on=["prompt_id", "layer"], suffixes=("_seed", ""), validate="one_to_one")
    if len(merged) != len(seed_rows):
        raise RuntimeError("the sweep lacks rows that the seed-style baseline has")
    return {m: float(np.abs(merged[m].to_numpy(float) - merged[f"{m}_seed"].to_numpy(float)).max()) for m in METRICS}


def model_bytes(model: model_mod.Model) -> int:
    """Return the bytes of the model's parameters and buffers (tied weights counted once)."""
    seen, total = set(), 0
    for t in list(model.hf.parameters()) + list(model.hf.buffers()):
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


# ------------------------------------------------------------------ memory (subprocess)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args: argparse.Namespace) -> dict:
    """Return the sweep's peak memory measured in this (fresh) process: one sweep after loading."""
    model, frame = setup(args)
    result = {"model_bytes": model_bytes(model)}
    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run_sweep(model, frame, args.batch_size)
        result.update(
            kind="cuda_max_memory_allocated", before_bytes=before, peak_bytes=torch.cuda.max_memory_allocated()
        )
        return result
    before = _status_kib("VmRSS") * 1024
    try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0), so loading is not counted
        Path("/proc/self/clear_refs").write_text("5")
        kind = "rss_peak_during_sweep"
    except OSError:
        kind = "rss_peak_since_start"
    run_sweep(model, frame, args.batch_size)
    result.update(kind=kind, before_bytes=before, peak_bytes=_status_kib("VmHWM") * 1024)
    return result


def measure_memory(argv: list[str]) -> dict:
    """Return :func:`memory_child`'s result from a fresh Python process given the same options."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-child"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ driver


def timed(fn, *a) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - start, out


def environment(model: model_mod.Model) -> dict:
    """Return device, versions, date and machine load for the record."""
    import transformers

    if model.device.type == "cuda":
        device = torch.cuda.get_device_name(model.device)
    else:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        device = f"cpu: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    return {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if model.device.type == "cuda" else None,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
    }


def one_pass(
    model: model_mod.Model, frame: pd.DataFrame, seed_frame: pd.DataFrame, batch_size: int, interleave: str, flip: bool
) -> tuple[dict[str, float], pd.DataFrame, pd.DataFrame]:
    """Return (seconds per method, sweep rows, seed-style rows) of one pass over all prompts.

    ``interleave="batch"``: the sweep's length-ordered batches one at a time, each timed as a bare
    forward and as ``lens.sweep`` of that batch (order alternating per batch, reversed when ``flip``),
    with one seed-style prompt after each of the first batches; the totals are summed. Load changes
    on a shared machine then hit every method alike. ``"pass"``: each method over all prompts in turn.
    """
    if interleave == "pass":
        t_bare, _ = timed(bare_forward, model, frame["prompt"].tolist(), batch_size)
        t_sweep, rows = timed(run_sweep, model, frame, batch_size)
        t_seed, seed_rows = timed(seed_style, model, seed_frame)
        return {"bare": t_bare, "sweep": t_sweep, "seed": t_seed}, rows, seed_rows
    spent = {"bare": 0.0, "sweep": 0.0, "seed": 0.0}
    parts, seed_parts = [], []
    order = capture.length_order(model, frame["prompt"].tolist())
    for i, idx in enumerate(capture.batched(order, batch_size)):
        sub = frame.iloc[idx]
        steps = ["bare", "sweep"] if (i % 2 == 0) != flip else ["sweep", "bare"]
        for step in steps:
            if step == "bare":
                t, _ = timed(bare_forward, model, sub["prompt"].tolist(), batch_size)
            else:
                t, part = timed(run_sweep, model, sub, batch_size)
                parts.append(part)
            spent[step] += t
        if i < len(seed_frame):
            t, part = timed(seed_style, model, seed_frame.iloc[i : i + 1])
            spent["seed"] += t
            seed_parts.append(part)
    if len(seed_parts) < len(seed_frame):  # more seed prompts than batches
        t, part = timed(seed_style, model, seed_frame.iloc[len(seed_parts) :])
        spent["seed"] += t
        seed_parts.append(part)
    return spent, pd.concat(parts, ignore_index=True), pd.concat(seed_parts, ignore_index=True)


def benchmark(
    model: model_mod.Model,
    frame: pd.DataFrame,
    *,
    batch_size: int,
    repeats: int,
    seed_n: int,
    warmup: bool = True,
    interleave: str = "batch",
    log=print,
) -> dict:  # noqa: ANN001
    """Return the timings, ratios and parity of bare / sweep / seed-style runs, alternating ``repeats`` times."""
    seed_frame = frame.iloc[: max(1, min(seed_n, len(frame)))]
    # warm-up: one batch each (also builds the energy Gram matrix, cached on the unembedding)
    if warmup:
        warm = frame.iloc[:batch_size]
        bare_forward(model, warm["prompt"].tolist(), batch_size)
        run_sweep(model, warm, batch_size)
        seed_style(model, seed_frame.iloc[:1])
    times: dict[str, list[float]] = {"bare": [], "sweep": [], "seed": []}
    loads = [os.getloadavg()[0]]
    rows = seed_rows = None
    for r in range(repeats):
        spent, rows, seed_rows = one_pass(model, frame, seed_frame, batch_size, interleave, flip=r % 2 == 1)
        for key, value in spent.items():
            times[key].append(value)
        loads.append(os.getloadavg()[0])
        log(
            f"repeat {r + 1}/{repeats}: bare {times['bare'][-1]:.2f}s  sweep {times['sweep'][-1]:.2f}s  "
            f"(x{times['sweep'][-1] / times['bare'][-1]:.3f})  "
            f"seed {times['seed'][-1]:.2f}s ({len(seed_frame)} prompts)"
            f"  load {loads[-1]:.1f}"
        )
    diffs = parity(rows, seed_rows)
    tol = PARITY_TOL.get(model.unembedding.head.weight.dtype, 1e-4)
    bare, sweep = statistics.median(times["bare"]), statistics.median(times["sweep"])
    seed_measured = statistics.median(times["seed"])
    seed_per_prompt = seed_measured / len(seed_frame)
    seed_total = seed_per_prompt * len(frame)
    return {
        "model": model.name,
        "n": len(frame),
        "batch_size": batch_size,
        "repeats": repeats,
        "bare_seconds": bare,
        "sweep_seconds": sweep,
        "seed_seconds": seed_total,
        "seed_seconds_measured": seed_measured,
        "seed_prompts": len(seed_frame),
        "seed_extrapolated": len(seed_frame) < len(frame),
        "seed_seconds_per_prompt": seed_per_prompt,
        "sweep_over_bare": sweep / bare,
        "seed_over_sweep": seed_total / sweep,
        "sweep_throughput_over_bare": bare / sweep,
        "parity_max_abs_diff": max(diffs.values()),
        "parity_by_metric": diffs,
        "parity_tolerance": tol,
        "parity_ok": max(diffs.values()) <= tol,
        "sweep_over_bare_per_repeat": [s / b for s, b in zip(times["sweep"], times["bare"])],
        "interleave": interleave,
        "runs": times,
        "load_average_1min": loads,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(parser)
    parser.add_argument("--pair", default="fr-zh", help="translation pair src-tgt (default fr-zh)")
    parser.add_argument("--n", type=int, default=None, help="number of prompts (default: all; synthetic: 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 (synthetic: 64)")
    parser.add_argument(
        "--seed-n", type=int, default=4, help="prompts for the (slow) seed-style baseline; time extrapolated"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--interleave",
        choices=["batch", "pass"],
        default="batch",
        help="alternate the methods batch by batch (default; robust to load changes) or whole passes",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--synthetic", choices=["llama2-7b"], default=None, help="random-weight model of this shape")
    parser.add_argument("--gpu-llama7b-shape", action="store_true", help="alias of --synthetic llama2-7b")
    parser.add_argument("--tiny", action="store_true", help="the synthetic mode with a tiny config (CPU check)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gpu_llama7b_shape:
        args.synthetic = "llama2-7b"
    if args.batch_size is None:
        args.batch_size = 64 if (args.synthetic or args.tiny) else 16
    prepare(args)
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return 0

    started = time.perf_counter()
    model, frame = setup(args)
    print(
        f"model {model.name}: {model.n_layers} layers, loaded in {time.perf_counter() - started:.1f}s; "
        f"{len(frame)} prompts, batch {args.batch_size}",
        flush=True,
    )
    result = {**environment(model), "command": "python benchmarks/bench_lens.py " + " ".join(argv)}
    result.update(
        benchmark(
            model,
            frame,
            batch_size=args.batch_size,
            repeats=args.repeats,
            seed_n=args.seed_n,
            interleave=args.interleave,
            log=lambda msg: print(msg, flush=True),
        )
    )
    size = model_bytes(model)
    result["model_bytes"] = size
    if not args.no_memory:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mem = measure_memory([a for a in argv if a != "--memory-child"])
        if mem["kind"].startswith("cuda"):  # max_memory_allocated counts the weights and what the sweep allocates
            peak = mem["peak_bytes"]
        else:  # the CPU analogue: the weights plus what the sweep adds to the process's resident memory
            peak = size + mem["peak_bytes"] - mem["before_bytes"]
            result["process_peak_rss_bytes"] = mem["peak_bytes"]
        result.update(
            {
                "memory_kind": mem["kind"],
                "memory_before_sweep_bytes": mem["before_bytes"],
                "sweep_added_bytes": mem["peak_bytes"] - mem["before_bytes"],
                "sweep_peak_memory_bytes": peak,
                "memory_target_bytes": size + 2**30,
                "memory_ok": peak <= size + 2**30,
            }
        )
    gib = 2**30
    print(f"\nbare forward  {result['bare_seconds']:9.2f} s   (median of {args.repeats})")
    print(
        f"lens.sweep    {result['sweep_seconds']:9.2f} s   sweep/bare = {result['sweep_over_bare']:.3f}"
        f"   (throughput {result['sweep_throughput_over_bare']:.3f}x the bare forward's)"
    )
    extra = f" (extrapolated from {result['seed_prompts']} prompts)" if result["seed_extrapolated"] else ""
    print(f"seed-style    {result['seed_seconds']:9.2f} s{extra}   seed/sweep = {result['seed_over_sweep']:.1f}")
    print(
        f"parity max |diff| {result['parity_max_abs_diff']:.2e} "
        f"({', '.join(f'{k} {v:.1e}' for k, v in result['parity_by_metric'].items())})"
        f" -> {'OK' if result['parity_ok'] else 'FAIL'} (tol {result['parity_tolerance']:g})"
    )
    if "sweep_peak_memory_bytes" in result:
        print(
            f"peak memory of the sweep {result['sweep_peak_memory_bytes'] / gib:.2f} GiB = model {size / gib:.2f} GiB"
            f" + {result['sweep_added_bytes'] / gib:.2f} GiB added by the sweep ({result['memory_kind']});"
            f" target <= {result['memory_target_bytes'] / gib:.2f} GiB -> {'OK' if result['memory_ok'] else 'MISSED'}"
        )
        if "process_peak_rss_bytes" in result:
            print(
                f"  whole-process peak RSS {result['process_peak_rss_bytes'] / gib:.2f} GiB "
                "(also counts the interpreter, libraries and tokenizer: "
                f"{result['memory_before_sweep_bytes'] / gib:.2f} GiB resident before the sweep)"
            )
    print(f"load average (1 min) during the runs: {', '.join(f'{x:.1f}' for x in result['load_average_1min'])}")
    write_json(args.json, result)
    return 0 if result["parity_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
