"""``python -m llmlatent <command>``: thin calls into the package modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

log = logging.getLogger("llmlatent")


from .errors import LlmlatentError, UsageError  # noqa: E402  (UsageError: bad command-line input)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .model import Model
    from .tasks import PromptSet


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF id or local path (default: embedded google/gemma-3-270m)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: float32 on CPU, bfloat16 on GPU",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--device-map", default=None, help="'auto' to spread a large model over GPUs (accelerate)")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub (only if you trust it)"
    )


def _add_prompts(p: argparse.ArgumentParser, default_task: str = "translation") -> None:
    # --task/--tgt default to None so that giving them together with --prompts can be refused (check_prompt_args)
    p.add_argument(
        "--task", default=None, choices=["translation", "repetition", "cloze"], help=f"default {default_task}"
    )
    p.add_argument(
        "--src",
        default=None,
        help="source language (en fr de ru zh; default fr, or --tgt for repetition); ignored for cloze",
    )
    p.add_argument("--tgt", default=None, help="target language (en fr de ru zh; default zh)")
    p.add_argument("--n", type=int, default=None, help="number of prompts (default: all that pass the filters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--strict", action="store_true", help="strict token sets (no 1-character prefixes for alphabetic words)"
    )
    p.add_argument(
        "--cognate-filter", action="store_true", help="drop concepts whose source and English token sets intersect"
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--words", default=None, help="folder of word CSVs (bundled or seed layout)")
    group.add_argument(
        "--prompts", default=None, help="saved prompt CSV in the seed layout (prompt, out_token_str, latent_token_str)"
    )
    p.add_argument("--batch-size", type=int, default=16)


def load_model(args: argparse.Namespace) -> Model:
    """Return the model named by the common --model/--dtype/--device options."""
    from . import model

    return model.load(
        args.model,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
    )


def check_prompt_args(args: argparse.Namespace) -> None:
    """Raise one clear error for bad prompt options before any model is loaded (fills the task/tgt defaults)."""
    from . import checks, data

    checks.count(args.n, "n", optional=True)
    checks.count(args.batch_size, "batch_size")
    if args.prompts:
        checks.input_file(args.prompts, "prompts")
        given = [f"--{k.replace('_', '-')}" for k in ("task", "src", "tgt", "cognate_filter") if getattr(args, k)]
        if given:
            raise UsageError(
                f"--prompts {args.prompts} already defines the prompts; drop {', '.join(given)} (they would be ignored)"
            )
        with _quiet(data.log):  # an empty, non-UTF-8 or malformed file fails now; its warnings come with the real read
            data.read_prompt_file(args.prompts)
        return
    args.task = args.task or "translation"
    args.tgt = args.tgt or "zh"
    data.check_lang(args.tgt)
    if args.src:
        data.check_lang(args.src)
    if args.task == "translation" and (args.src or "fr") == args.tgt:
        raise data.DataError(
            f"translation needs two different languages (got {args.tgt}→{args.tgt}); use --task repetition"
        )
    if args.words:  # empty, non-UTF-8 or duplicate-concept word files fail now, not after the model load
        with _quiet(data.log):
            data.read_table(
                ["en", args.src or ("fr" if args.task == "translation" else args.tgt), args.tgt], args.words
            )


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Yield with ``logger`` disabled (a check that reads input again later, when its warnings are shown)."""
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def build_prompts(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> PromptSet:
    """Return the PromptSet named by the common prompt options."""
    from . import tasks

    if args.prompts:
        return tasks.from_prompt_file(args.prompts, tokenizer, strict=args.strict, n=args.n, seed=args.seed)
    task, tgt = args.task or "translation", args.tgt or "zh"
    src = args.src or ("fr" if task == "translation" else tgt)
    return tasks.build(
        task,
        src,
        tgt,
        tokenizer,
        n=args.n,
        seed=args.seed,
        words_dir=args.words,
        strict=args.strict,
        cognate_filter=args.cognate_filter,
    )


def cmd_lens(args: argparse.Namespace) -> int:
    """Print the top tokens of every layer for one hand-written prompt."""
    import pandas as pd

    from . import checks, lens

    prompt = args.prompt
    if args.escapes:
        prompt = prompt.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
    if not prompt.strip():
        raise UsageError("the prompt is empty; pass some text")
    checks.count(args.k, "k", flag="-k")
    if args.out:
        checks.output_file(args.out, "out")
    m = load_model(args)
    table = lens.top_tokens(m, prompt, k=args.k)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 24):
        print(lens.top_tokens_wide(table).to_string())
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the per-layer lens sweep and write rows.csv, summary.csv, figures and run.json."""
    from llmlatent.experiments import sweep as experiment

    from .atomic import check_output_dir

    started = time.perf_counter()
    check_prompt_args(args)
    check_output_dir(args.out, "run.json")  # before the model load: never refuse (or delete) after the work
    m = load_model(args)
    prompts = build_prompts(args, m.tokenizer)
    log.info(prompts.report())
    run = experiment.sweep_to_dir(
        m, prompts, Path(args.out), batch_size=args.batch_size, seed=args.seed, ci=args.ci, started=started
    )
    print(json.dumps({k: run[k] for k in ("n_prompts", "seconds", "peak_english", "final_target")}, ensure_ascii=False))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run every experiment and re-render every figure; print the total time."""
    from llmlatent import checks
    from llmlatent.experiments import reproduce

    checks.count(args.n, "n", optional=True)
    checks.count(args.batch_size, "batch_size")
    load_kwargs = {
        "dtype": args.dtype,
        "device": args.device,
        "device_map": args.device_map,
        "trust_remote_code": args.trust_remote_code,
    }
    summary = reproduce.run_all(
        args.model,
        results=args.results,
        figures=args.figures,
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        force=args.force,
        only=args.only,
        load_kwargs=load_kwargs,
    )
    print(
        f"reproduced {summary['runs']} runs, {len(summary['figures'])} figures in {args.figures}/ "
        f"in {summary['seconds']:.0f} s"
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Collect last-token latents into a resumable latent store; data-parallel under torchrun (RANK/WORLD_SIZE)."""
    import os

    from llmlatent import latents

    started = time.perf_counter()
    latents.check_dtype(args.dtype_store)
    check_prompt_args(args)
    latents.check_store_dir(args.out, shard_size=args.shard_size, repair=args.repair)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    group = False
    if world > 1:
        import torch
        import torch.distributed as dist

        if args.device is None and args.device_map is None and torch.cuda.is_available():
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        if "MASTER_ADDR" in os.environ and not dist.is_initialized():
            dist.init_process_group("gloo")  # only for a barrier at the end; shards need no communication
            group = True
    try:
        m = load_model(args)
        prompts = build_prompts(args, m.tokenizer)
        log.info(prompts.report())
        store = latents.collect(
            m,
            prompts,
            args.out,
            batch_size=args.batch_size,
            dtype=args.dtype_store,
            shard_size=args.shard_size,
            repair=args.repair,
        )
    finally:
        if group:
            dist.destroy_process_group()
    if store is None:
        log.info("rank %d of %d done; the store is complete once every rank has finished", rank, world)
    elif rank == 0:
        info = latents.info(args.out, verify=False)  # collect → load has just verified every sha256
        print(
            json.dumps(
                {
                    "out": args.out,
                    "n_prompts": info["n_prompts"],
                    "seconds": round(time.perf_counter() - started, 3),
                    "size_bytes": info["size_bytes"],
                    "model": info["model"],
                },
                ensure_ascii=False,
            )
        )
    return 0


def cmd_cache_info(args: argparse.Namespace) -> int:
    """Print a latent store's model, counts, layers, dtype and size on disk (JSON)."""
    from llmlatent import latents

    print(json.dumps(latents.info(args.dir, verify=args.verify), indent=1, ensure_ascii=False))
    return 0


def _numbers(text: list[str], kind: type) -> list | None:
    """Return the numbers of ``--layers 4 6`` / ``--layers 4,6`` style options (None when not given)."""
    if text is None:
        return None
    try:
        return [kind(x) for part in text for x in part.split(",") if x.strip()]
    except ValueError as exc:
        raise UsageError(f"not a list of {kind.__name__} numbers: {' '.join(text)}") from exc


def cmd_steer(args: argparse.Namespace) -> int:
    """Run the language-steering demo (fit Δ, choose layer × α on the select split, report on test) into --out."""
    from llmlatent import latents
    from llmlatent.experiments.steering import demo as steering_sweep

    from .atomic import check_output_dir

    settings = steering_sweep.check_settings(  # every bad value is answered here, before the model loads
        source=args.source,
        target=args.target,
        via=args.via,
        layers=_numbers(args.layers, int),
        alphas=_numbers(args.alphas, float),
        n_concepts=args.n_concepts,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        n_generate=args.n_generate,
        n_random=args.n_random,
        flip=args.flip,
        n_flip=args.n_flip,
        wrong_pair=args.wrong_pair,
        batch_size=args.batch_size,
    )
    check_output_dir(args.out, "best.json")
    reuse = [latents.load(path) for path in args.reuse_stores or ()]
    m = load_model(args)
    best = steering_sweep.run_to_dir(
        m,
        args.out,
        force=args.force,
        store_dir=args.store_dir,
        reuse_stores=reuse,
        words_dir=args.words_dir,
        **settings,
    )
    keys = (
        "layer",
        "alpha",
        "n",
        "cjk_top1_share",
        "correct_target_top1_share",
        "p_target_answer",
        "p_source_answer",
        "baseline_cjk_top1_share",
        "random_control_cjk_top1_share",
        "wrong_pair_cjk_top1_share",
        "seconds",
    )
    print(json.dumps({k: best.get(k) for k in keys}, ensure_ascii=False))
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    """Run both activation-patching experiments (language before concept; mean over languages) into --out."""
    from llmlatent.experiments import patching as patch_experiment

    from .atomic import check_output_dir

    donor = patch_experiment.parse_spec(args.donor, "--donor")
    receiver = patch_experiment.parse_spec(args.receiver, "--receiver")
    mean_over = [x.strip() for x in args.mean_over.split(",") if x.strip()] if args.mean_over else None
    layers = _numbers(args.layers, int)
    patch_experiment.check_settings(donor, receiver, mean_over, args.n)
    if args.window < 1:
        raise UsageError(f"--window must be at least 1, got {args.window}")
    check_output_dir(args.out, "run.json")  # before loading the model
    m = load_model(args)
    run = patch_experiment.run_to_dir(
        m,
        args.out,
        donor=donor,
        receiver=receiver,
        mean_over=mean_over,
        n=args.n,
        seed=args.seed,
        layers=layers,
        window=args.window,
        batch_size=args.batch_size,
        words_dir=args.words,
        store_dir=args.latents,
        ci=args.ci,
    )
    keys = ("n_pairs", "seconds", "unpatched", "language_moves_at", "concept_moves_at", "single", "mean")
    print(json.dumps({k: run[k] for k in keys if k in run}, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m llmlatent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("lens", help="top tokens of every layer for a hand prompt")
    p.add_argument("prompt", help='the prompt; \\n and \\" escapes are interpreted')
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the tidy table to this CSV")
    p.add_argument("--no-escapes", dest="escapes", action="store_false", help="take the prompt literally")
    _add_model(p)
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("sweep", help="per-layer lens over a task's prompts (the paper's main experiment)")
    _add_prompts(p)
    _add_model(p)
    p.add_argument("--ci", default="normal", choices=["normal", "bootstrap"])
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("reproduce", help="run every experiment on one model and write all figures (make reproduce)")
    p.add_argument("--model", default=None, help="HF id or local path (default: embedded google/gemma-3-270m)")
    p.add_argument("--results", default="results")
    p.add_argument("--figures", default="figures")
    p.add_argument("--n", type=int, default=None, help="prompts per run (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: float32 on CPU, bfloat16 on GPU",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--device-map", default=None, help="'auto' to spread a large model over GPUs (accelerate)")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub (only if you trust it)"
    )
    p.add_argument("--only", default=None, choices=["translation", "repetition", "cloze"], help="run one task only")
    p.add_argument("--force", action="store_true", help="recompute runs that are already cached")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("cache", help="collect last-token latents of every block into a resumable latent store")
    _add_prompts(p)
    _add_model(p)
    p.add_argument("--out", required=True, help="store folder (rerun the same command to resume)")
    p.add_argument("--dtype-store", default="float16", choices=["float16", "bfloat16", "float32"], help="storage dtype")
    p.add_argument(
        "--shard-size", type=int, default=None, help="prompts per shard (default 64; a resumed store keeps its own)"
    )
    p.add_argument(
        "--n-prompts",
        dest="n",
        type=int,
        help="same as --n; use this under torchrun, which takes --n for its own --nnodes",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="rebuild an unreadable store.json from the prompts and model, keeping every shard that still verifies",
    )
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser(
        "steer", help="language steering: fit μ_target − μ_source, choose layer × α on a select split, report on test"
    )
    p.add_argument("--source", default="ru", help="language the steered prompts answer in (default ru)")
    p.add_argument("--target", default="zh", help="language to steer towards (default zh)")
    p.add_argument("--via", default="fr", help="source language of the translation prompts (default fr)")
    p.add_argument(
        "--layers",
        nargs="+",
        default=None,
        help="layers (after block i, 0-based), e.g. 5 7 9 or 5,7,9 (default: 6 spread over 30-90%% of the depth)",
    )
    p.add_argument(
        "--alphas",
        nargs="+",
        default=None,
        help="multiples of Δ, 0 < α ≤ 100, e.g. 0.5 1 2 4 (the default); 0 = baseline is always included",
    )
    p.add_argument(
        "--n-concepts", type=int, default=96, help="concepts used, cut into fit / select / test thirds (default 96)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=5, help="greedy generation length (default 5)")
    p.add_argument(
        "--n-generate",
        "--generate",
        dest="n_generate",
        type=int,
        default=16,
        help="test prompts with greedy generations per setting (default 16)",
    )
    p.add_argument(
        "--n-random",
        "--random",
        dest="n_random",
        type=int,
        default=3,
        help="random directions of Δ's norm per direction, the control (default 3)",
    )
    p.add_argument(
        "--no-flip", dest="flip", action="store_false", help="skip the flip direction (−Δ on target-language prompts)"
    )
    p.add_argument(
        "--n-flip",
        "--flip-prompts",
        dest="n_flip",
        type=int,
        default=16,
        help="target-language prompts per split (select, test) for the flip direction (default 16)",
    )
    p.add_argument(
        "--wrong-pair",
        nargs=2,
        default=None,
        metavar=("TOWARDS", "AWAY_FROM"),
        help="the wrong-pair control μ_TOWARDS − μ_AWAY_FROM at Δ's norm (default: en ru for ru→zh via fr)",
    )
    p.add_argument(
        "--store-dir",
        "--latents",
        dest="store_dir",
        default=None,
        help="keep the fit latent stores in this folder and reuse them on reruns (default: temporary)",
    )
    p.add_argument(
        "--reuse-stores",
        nargs="+",
        default=None,
        help="latent stores (e.g. from `cache`) searched for the fit prompts before computing them",
    )
    p.add_argument(
        "--words-dir", "--words", dest="words_dir", default=None, help="folder of word CSVs (bundled or seed layout)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--force", action="store_true", help="recompute even if --out holds a result with the same settings")
    _add_model(p)
    p.add_argument("--out", required=True, help="output folder (written atomically; reused when the settings match)")
    p.set_defaults(func=cmd_steer)

    p = sub.add_parser(
        "patch", help="activation patching: donor latents into receiver prompts at each layer (Dumas et al.)"
    )
    p.add_argument("--donor", default="de:fr", help="donor translation SRC:TGT (default de:fr)")
    p.add_argument(
        "--receiver", default="ru:zh", help="receiver translation SRC:TGT, another output language (default ru:zh)"
    )
    p.add_argument(
        "--mean-over",
        default=None,
        help="input languages whose C_d latents (answering in the receiver's "
        "language) are averaged, e.g. de,fr,ru,en; adds the mean-over-languages experiment",
    )
    p.add_argument(
        "--n", type=int, default=None, help="donor/receiver pairs (default: every concept that passes the filters)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", nargs="+", default=None, help="patched layers (after block i, 0-based; default all)")
    p.add_argument(
        "--window", type=int, default=1, help="blocks overwritten from the layer on (default 1: that block only)"
    )
    p.add_argument(
        "--latents", default=None, help="take donor latents from latent stores in this folder (collected if missing)"
    )
    p.add_argument("--words", default=None, help="folder of word CSVs (bundled or seed layout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ci", default="normal", choices=["normal", "bootstrap"])
    _add_model(p)
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("cache-info", help="model, counts, layers and size on disk of a latent store")
    p.add_argument("dir", help="latent store folder")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the sha256 check of the shard files (sizes and shard.json are still checked)",
    )
    p.set_defaults(func=cmd_cache_info)

    return parser


def _verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``-v`` after the subcommand too (every subparser, including ones added later)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "-v" not in sub._option_string_actions:
                    sub.add_argument(
                        "-v",
                        "--verbose",
                        action="store_true",
                        default=argparse.SUPPRESS,
                        help="log progress and show the traceback of every error",
                    )


INTERRUPTED = (
    "interrupted; nothing partial was kept as a result (a latent store keeps its finished shards: "
    "rerun the same command to resume)"
)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (domain errors print one line, status 2; Ctrl-C 130)."""
    parser = build_parser()
    _verbose_everywhere(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("llmlatent").setLevel(logging.INFO)
    if not args.verbose:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    try:
        return int(args.func(args) or 0)
    except LlmlatentError as exc:  # only domain errors become one line; a bug keeps its traceback
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print(INTERRUPTED, file=sys.stderr)
        return 130
