"""``python -m llmlatent <command>``: one subcommand per entry of :data:`llmlatent.experiments.EXPERIMENTS`.

Each entry's flags are generated from its settings dataclass. ``sweep``, ``steer``, ``patch``, ``detour``,
``steer-bench`` and ``geometry`` run one experiment through :func:`llmlatent.experiments.runs.run` (a folder whose
cache key matches is reused; ``--force`` recomputes); ``cache`` writes a latent store, ``import-latents`` the paper's
own latents into stores, ``lens`` (``--generate N``: along a greedy generation) prints one prompt's top tokens;
``reproduce`` runs them all and ``cache-info`` prints a store's summary.
Every bad value is answered (one line, exit status 2) before the model is loaded.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import traceback
from typing import TYPE_CHECKING

from llmlatent.errors import LlmlatentError
from llmlatent.experiments.settings import ModelOptions, add_flags, from_args

if TYPE_CHECKING:
    from llmlatent.adapter import LoadedHead
    from llmlatent.experiments.base import Command, Experiment
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


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run one experiment of the list into --out (``runs.run``) and print its headline numbers as JSON."""
    from llmlatent.experiments import runs

    experiment = args.entry
    settings = from_args(experiment.settings, args)  # every bad value is answered here
    settings.preflight()  # and every missing or unreadable file
    runs.check_out(args.out, experiment)  # before the model load: never refuse (or delete) after the work
    source = load_head(args) if getattr(settings, "from_latents", None) else load_model(args)  # a store: head only
    record = runs.run(settings, source, args.out, force=args.force, experiment=experiment)
    print(json.dumps({k: record.get(k) for k in experiment.headline if k in record}, ensure_ascii=False))
    return 0


def cmd_command(args: argparse.Namespace) -> int:
    """Run one command of the list (``lens``, ``cache``, ``import-latents``): its settings are checked, then its
    ``main`` checks what it can before it loads the model (or the head alone)."""
    command = args.entry
    settings = from_args(command.settings, args)  # every bad value is answered here
    settings.preflight()  # and every missing or unreadable file
    load = (lambda: load_head(args)) if command.loads == "head" else (lambda: load_model(args))
    command.main(settings, load, args.out if command.out else None, bool(command.force and args.force))
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


def cmd_cache_info(args: argparse.Namespace) -> int:
    """Print a latent store's model, counts, layers, dtype and size on disk (JSON)."""
    from llmlatent import latents

    print(json.dumps(latents.info(args.dir, verify=args.verify), indent=1, ensure_ascii=False))
    return 0


def add_entry(sub: argparse._SubParsersAction, entry: Experiment | Command) -> None:
    """Return None after adding the subcommand of one entry of the experiment list (flags from its settings)."""
    from llmlatent.experiments.base import Experiment

    p = sub.add_parser(entry.command, help=entry.help)
    add_flags(p, entry.settings)
    add_flags(p, ModelOptions)
    if isinstance(entry, Experiment):
        p.add_argument(
            "--out", required=True, help="output folder (written atomically; reused when the settings match)"
        )
        p.add_argument(
            "--force", action="store_true", help="recompute even if --out holds a result with the same settings"
        )
        p.set_defaults(func=cmd_experiment, entry=entry)
        return
    if entry.out:
        p.add_argument("--out", required=True, help=entry.out)
    if entry.force:
        p.add_argument("--force", action="store_true", help=entry.force)
    p.set_defaults(func=cmd_command, entry=entry)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser: one subcommand per entry of the experiment list, then reproduce and cache-info."""
    from llmlatent.experiments import EXPERIMENTS
    from llmlatent.experiments.reproduce import ReproduceSettings

    parser = argparse.ArgumentParser(prog="python -m llmlatent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for entry in EXPERIMENTS:
        add_entry(sub, entry)

    p = sub.add_parser("reproduce", help="run every experiment on one model and write all figures (make reproduce)")
    add_flags(p, ReproduceSettings)
    add_flags(p, ModelOptions)
    p.add_argument("--force", action="store_true", help="recompute runs that are already cached")
    p.set_defaults(func=cmd_reproduce)

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
