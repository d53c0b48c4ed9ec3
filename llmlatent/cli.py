"""``python -m llmlatent <command>``: every experiment command's flags are generated from its settings dataclass.

``sweep``, ``steer``, ``patch`` and ``detour`` run one experiment through :func:`llmlatent.experiments.runs.run`
(a folder whose cache key matches is reused; ``--force`` recomputes); ``reproduce`` runs them all; ``cache``
writes a latent store, ``import-latents`` the paper's own latents into stores; ``lens`` (``--generate N``: along
a greedy generation) and ``cache-info`` print.
Every bad value is answered (one line, exit status 2) before the model is loaded.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from llmlatent.errors import LlmlatentError, UsageError
from llmlatent.experiments.settings import ModelOptions, add_flags, from_args

if TYPE_CHECKING:
    from llmlatent.adapter import LoadedHead
    from llmlatent.model import Model

log = logging.getLogger("llmlatent")


def load_model(args: argparse.Namespace) -> Model:
    """Return the model named by the common model options (the one place a command loads its model)."""
    return from_args(ModelOptions, args).load()


def load_head(args: argparse.Namespace) -> LoadedHead:
    """Return the final norm + unembedding (and tokenizer) of the model the common model options name, alone."""
    from llmlatent.model import load_unembedding

    options = from_args(ModelOptions, args)
    return load_unembedding(
        options.model,
        dtype=options.dtype or "float32",
        device=options.device or "cpu",
        trust_remote_code=options.trust_remote_code,
    )


def _settings_class(command: str) -> type:
    from llmlatent.experiments.detour import DetourSettings
    from llmlatent.experiments.geometry import GeometrySettings
    from llmlatent.experiments.patching import PatchSettings
    from llmlatent.experiments.steering.bench.plan import SteerBenchSettings
    from llmlatent.experiments.steering.plan import SteeringSettings
    from llmlatent.experiments.sweep import SweepSettings

    commands = {"sweep": SweepSettings, "steer": SteeringSettings, "patch": PatchSettings, "detour": DetourSettings}
    return {**commands, "steer-bench": SteerBenchSettings, "geometry": GeometrySettings}[command]


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run one experiment (sweep, steer, patch, detour, steer-bench) into --out and print its headline numbers as
    JSON."""
    from llmlatent.experiments import runs

    settings = from_args(_settings_class(args.command), args)  # every bad value is answered here
    settings.preflight()  # and every missing or unreadable file
    experiment = runs.experiment_of(settings)
    runs.check_out(args.out, experiment)  # before the model load: never refuse (or delete) after the work
    source = load_head(args) if getattr(settings, "from_latents", None) else load_model(args)  # a store: head only
    record = runs.run(settings, source, args.out, force=args.force)
    print(json.dumps({k: record.get(k) for k in experiment.headline if k in record}, ensure_ascii=False))
    return 0


def cmd_lens(args: argparse.Namespace) -> int:
    """Print the top tokens of every layer for one hand-written prompt."""
    import pandas as pd

    from llmlatent import checks
    from llmlatent.lens import last_token as lens

    prompt = args.prompt
    if args.escapes:
        prompt = prompt.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
    if not prompt.strip():
        raise UsageError("the prompt is empty; pass some text")
    checks.count(args.k, "k", flag="-k")
    if args.out:
        checks.output_file(args.out, "out")
    if args.generate:
        from llmlatent.cli_lens import lens_generation

        return lens_generation(args, prompt, load_model)
    m = load_model(args)
    table = lens.top_tokens(m, prompt, k=args.k)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 24):
        print(lens.top_tokens_wide(table).to_string())
    if args.out:
        from llmlatent.atomic import atomic_file

        with atomic_file(args.out) as tmp:  # complete under its name, or not there at all
            table.to_csv(tmp, index=False)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run every experiment and re-render every figure; print the total time."""
    from llmlatent.experiments import reproduce

    settings = from_args(reproduce.ReproduceSettings, args)
    reproduce.plan(settings)  # every step's settings are validated before the model loads
    summary = reproduce.run_steps(settings, load_model(args), force=args.force)
    print(
        f"reproduced {summary['runs']} runs, {len(summary['figures'])} figures in {settings.figures}/ "
        f"in {summary['seconds']:.0f} s"
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Collect last-token latents into a resumable latent store; data-parallel under torchrun (RANK/WORLD_SIZE)."""
    from llmlatent import latents
    from llmlatent.experiments.cache import CacheSettings
    from llmlatent.experiments.runs import Clock

    clock, settings = Clock(), from_args(CacheSettings, args)
    settings.preflight()
    latents.check_store_dir(args.out, shard_size=settings.shard_size, repair=settings.repair or args.force)
    if args.force:  # only a folder laid out as a latent store; any other is refused and kept
        latents.remove_store(args.out)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    group = world > 1 and _join_group(args, rank)
    try:
        m = load_model(args)
        prompts = settings.build(m.tokenizer)
        log.info(prompts.report())
        store = latents.collect(
            m,
            prompts,
            args.out,
            batch_size=settings.batch_size,
            dtype=settings.dtype_store,
            shard_size=settings.shard_size,
            repair=settings.repair,
        )
    finally:
        if group:
            import torch.distributed as dist

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
                    "seconds": round(clock.total(), 3),
                    "size_bytes": info["size_bytes"],
                    "model": info["model"],
                },
                ensure_ascii=False,
            )
        )
    return 0


def _join_group(args: argparse.Namespace, rank: int) -> bool:
    """Return whether a process group was started (torchrun); each rank takes its own GPU unless told otherwise."""
    import torch
    import torch.distributed as dist

    if (
        getattr(args, "device", None) is None
        and getattr(args, "device_map", None) is None
        and torch.cuda.is_available()
    ):
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    if "MASTER_ADDR" in os.environ and not dist.is_initialized():
        dist.init_process_group("gloo")  # only for a barrier at the end; shards need no communication
        return True
    return False


def cmd_import_latents(args: argparse.Namespace) -> int:
    """Import the paper's .pt latents (files, or folders in the dataset's layout) into one store each under --out."""

    from tqdm.auto import tqdm

    from llmlatent.experiments.cache import ImportSettings
    from llmlatent.latents import check_store_dir, paper

    settings, out = from_args(ImportSettings, args), Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder (each imported file becomes a store in it)")
    files = [paper.locate(f) for f in paper.find_paper_files(args.paths)]
    for file in files:  # names, CSVs and store folders of every file before the head loads
        paper.read_paper_csv(file)
        check_store_dir(out / file.name, shard_size=settings.shard_size)
    head, written = load_head(args), []
    for file in tqdm(files, desc="import latents", unit="file", disable=len(files) < 2 and not args.verbose):
        try:
            store = paper.import_paper(
                file.pt, head, out / file.name, dtype=settings.dtype_store, shard_size=settings.shard_size
            )
        except LlmlatentError as exc:
            done = f"{len(written)} of {len(files)} stores were imported before it ({', '.join(written)}); "
            raise type(exc)(f"{done if written else ''}{exc}") from None
        written.append(str(store.path))
        token_sets = store.meta["paper_token_sets"]
        summary = {"store": str(store.path), "n_prompts": len(store), "layers": store.n_layers}
        summary["sets_equal_to_stored"] = {k: f"{v['equal_to_stored']}/{v['of']}" for k, v in token_sets.items()}
        print(json.dumps(summary, ensure_ascii=False))
    return 0


def cmd_cache_info(args: argparse.Namespace) -> int:
    """Print a latent store's model, counts, layers, dtype and size on disk (JSON)."""
    from llmlatent import latents

    print(json.dumps(latents.info(args.dir, verify=args.verify), indent=1, ensure_ascii=False))
    return 0


EXPERIMENTS = {  # command → (help, what --out is)
    "sweep": ("per-layer lens over a task's prompts (the paper's main experiment)", "output folder"),
    "steer": (
        "language steering: fit μ_target − μ_source, choose layer × α on a select split, report on test",
        "output folder",
    ),
    "patch": ("activation patching: donor latents into receiver prompts at each layer (Dumas et al.)", "output folder"),
    "detour": ("every generated answer token at every layer: p(English) vs p(target) (Schut et al.)", "output folder"),
    "steer-bench": (
        "steering benchmark: every ordered pair of --langs, four vector methods, (layer, α) held out",
        "output folder",
    ),
    "geometry": (
        "MDS of latent paths, Procrustes ranks, latent norms of a latent store (no forward pass)",
        "output folder",
    ),
}


def add_lens_parser(sub: argparse._SubParsersAction) -> None:
    """Return None after adding the ``lens`` command (one prompt's top tokens; ``--generate N``: along a generation)."""
    p = sub.add_parser("lens", help="top tokens of every layer for a hand prompt")
    p.add_argument("prompt", help='the prompt; \\n and \\" escapes are interpreted')
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the tidy table to this CSV")
    p.add_argument("--no-escapes", dest="escapes", action="store_false", help="take the prompt literally")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="lens of each of N greedily generated tokens")
    p.add_argument("--figure", default=None, help="--generate: heatmap PNG+PDF path (default: --out without .csv)")
    p.add_argument("--colour", default="probability", help="--generate: heatmap colour, probability or p_<lang>")
    p.add_argument("--langs", default=None, help="--generate: languages of the word sets and tags (default: all)")
    p.add_argument("--concepts", default=None, help="--generate: concepts of the word sets (default: in the prompt)")
    add_flags(p, ModelOptions)
    p.set_defaults(func=cmd_lens)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand (experiment flags generated from the settings dataclasses)."""
    from llmlatent.experiments.cache import CacheSettings, ImportSettings
    from llmlatent.experiments.reproduce import ReproduceSettings

    parser = argparse.ArgumentParser(prog="python -m llmlatent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    add_lens_parser(sub)

    for command, (text, out) in EXPERIMENTS.items():
        p = sub.add_parser(command, help=text)
        add_flags(p, _settings_class(command))
        add_flags(p, ModelOptions)
        p.add_argument("--out", required=True, help=f"{out} (written atomically; reused when the settings match)")
        p.add_argument(
            "--force", action="store_true", help="recompute even if --out holds a result with the same settings"
        )
        p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("reproduce", help="run every experiment on one model and write all figures (make reproduce)")
    add_flags(p, ReproduceSettings)
    add_flags(p, ModelOptions)
    p.add_argument("--force", action="store_true", help="recompute runs that are already cached")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("cache", help="collect last-token latents of every block into a resumable latent store")
    add_flags(p, CacheSettings)
    add_flags(p, ModelOptions)
    p.add_argument("--out", required=True, help="store folder (rerun the same command to resume)")
    p.add_argument("--force", action="store_true", help="remove the latent store at --out and collect it anew")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("import-latents", help="the paper's precomputed latents (.pt + _dataset.csv) into latent stores")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a .pt file, or a folder (every .pt under it)")
    add_flags(p, ImportSettings)
    add_flags(p, ModelOptions)
    p.add_argument("--out", required=True, help="folder of the stores (one per file, named by it: 7b_fr_zh …)")
    p.set_defaults(func=cmd_import_latents)

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
    "interrupted; no partial result was kept: result folders appear only when complete, and a latent "
    "store keeps its finished shards (rerun the same command to resume)"
)


DISK_FULL = (
    "no space left on the device while writing {where} (files are written under temporary names: no partial one "
    "was kept); free some space there (df -h) and rerun the same command"
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
    except OSError as exc:  # a full disk where no command said more (result folders and stores do)
        if exc.errno != errno.ENOSPC:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"error: {DISK_FULL.format(where=exc.filename or 'an output file')}", file=sys.stderr)
        return 2
