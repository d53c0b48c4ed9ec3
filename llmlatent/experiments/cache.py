"""The ``cache`` and ``import-latents`` commands: latents into latent stores (the stores themselves are library:
:mod:`llmlatent.latents`).

- ``cache`` (:data:`COMMAND`, :func:`collect`): last-token latents of every block for a task's prompts into a
  resumable store; data-parallel under torchrun (``RANK``/``WORLD_SIZE``).
- ``import-latents`` (:data:`IMPORT`, :func:`import_paper`): the paper's own ``.pt`` latents, one store per file.

Neither writes a cached result folder: a store resumes by itself, so both are :class:`Command` entries.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmlatent import checks
from llmlatent.errors import LlmlatentError, UsageError
from llmlatent.experiments.base import Clock, Command
from llmlatent.experiments.prompts import PromptSettings
from llmlatent.experiments.settings import Settings, option
from llmlatent.latents import check_dtype

if TYPE_CHECKING:
    from llmlatent.adapter import LoadedHead
    from llmlatent.model import Model

log = logging.getLogger(__name__)

STORAGE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class CacheSettings(PromptSettings):
    """Last-token latents of every block for a task's prompts, into a latent store (rerun to resume)."""

    dtype_store: str = option("float16", "storage dtype", choices=STORAGE_DTYPES)
    shard_size: int | None = option(None, "prompts per shard (default 64; a resumed store keeps its own)")
    repair: bool = option(
        False, "rebuild an unreadable store.json from the prompts and model, keeping every shard that still verifies"
    )

    def __post_init__(self) -> None:
        check_dtype(self.dtype_store)
        checks.count(self.shard_size, "shard_size", optional=True)
        super().__post_init__()


@dataclass(frozen=True)
class ImportSettings(Settings):
    """The paper's precomputed latents (wendlerc/llm-latent-language) into latent stores, one per .pt file."""

    paths: tuple[str, ...] = option(
        (), "a .pt file, or a folder (every .pt under it)", positional=True, metavar="PATH", key=False
    )
    dtype_store: str = option("float32", "storage dtype (the paper's files are float32)", choices=STORAGE_DTYPES)
    shard_size: int | None = option(None, "prompts per shard (default 64; a resumed store keeps its own)")

    def __post_init__(self) -> None:
        check_dtype(self.dtype_store)
        checks.count(self.shard_size, "shard_size", optional=True)


def collect(settings: CacheSettings, load: Callable[[], Model], out: str | None, force: bool = False) -> None:
    """Return None after collecting the latents of ``settings``' prompts into the store ``out`` (printing its summary).

    The folder is checked before ``load()``; ``force`` removes a latent store there first (anything else is refused
    and kept). Under torchrun each rank computes its own shards; rank 0 prints the summary once the store is whole.
    """
    from llmlatent import latents

    assert out is not None  # the command's --out is required
    clock = Clock()
    latents.check_store_dir(out, shard_size=settings.shard_size, repair=settings.repair or force)
    if force:  # only a folder laid out as a latent store; any other is refused and kept
        latents.remove_store(out)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    with process_group(world):
        m = load()
        prompts = settings.build(m.tokenizer)
        log.info(prompts.report())
        store = latents.collect(
            m,
            prompts,
            out,
            batch_size=settings.batch_size,
            dtype=settings.dtype_store,
            shard_size=settings.shard_size,
            repair=settings.repair,
        )
    if store is None:
        log.info("rank %d of %d done; the store is complete once every rank has finished", rank, world)
    elif rank == 0:
        info = latents.info(out, verify=False)  # collect → load has just verified every sha256
        summary = {
            "out": out,
            "n_prompts": info["n_prompts"],
            "seconds": round(clock.total(), 3),
            "size_bytes": info["size_bytes"],
            "model": info["model"],
        }
        print(json.dumps(summary, ensure_ascii=False))


@contextmanager
def process_group(world: int) -> Iterator[None]:
    """Yield inside a gloo process group when torchrun started ``world`` > 1 processes (for the store's final barrier;
    shards need no communication); the group is destroyed on the way out."""
    if world < 2:
        yield
        return
    import torch.distributed as dist

    started = "MASTER_ADDR" in os.environ and not dist.is_initialized()
    if started:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        if started:
            dist.destroy_process_group()


def import_paper(
    settings: ImportSettings, load: Callable[[], LoadedHead], out: str | None, force: bool = False
) -> None:
    """Return None after importing every .pt file of ``settings.paths`` into its own store under ``out``.

    Every file's name, dataset CSV and store folder is checked before ``load()`` loads the head; each store's
    summary is printed as it is written, and a failure names the stores already imported.
    """
    from tqdm.auto import tqdm

    from llmlatent.latents import check_store_dir, paper

    assert out is not None  # the command's --out is required
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file; pass a folder (each imported file becomes a store in it)")
    files = [paper.locate(f) for f in paper.find_paper_files(list(settings.paths))]
    for file in files:  # names, CSVs and store folders of every file before the head loads
        paper.read_paper_csv(file)
        check_store_dir(folder / file.name, shard_size=settings.shard_size)
    head, written = load(), list[str]()
    verbose = logging.getLogger().isEnabledFor(logging.INFO)  # the command line's -v
    for file in tqdm(files, desc="import latents", unit="file", disable=len(files) < 2 and not verbose):
        try:
            store = paper.import_paper(
                file.pt, head, folder / file.name, dtype=settings.dtype_store, shard_size=settings.shard_size
            )
        except LlmlatentError as exc:
            done = f"{len(written)} of {len(files)} stores were imported before it ({', '.join(written)}); "
            raise type(exc)(f"{done if written else ''}{exc}") from None
        written.append(str(store.path))
        token_sets = store.meta["paper_token_sets"]
        summary = {"store": str(store.path), "n_prompts": len(store), "layers": store.n_layers}
        summary["sets_equal_to_stored"] = {k: f"{v['equal_to_stored']}/{v['of']}" for k, v in token_sets.items()}
        print(json.dumps(summary, ensure_ascii=False))


COMMAND = Command(
    "cache",
    "collect last-token latents of every block into a resumable latent store",
    CacheSettings,
    collect,
    out="store folder (rerun the same command to resume)",
    force="remove the latent store at --out and collect it anew",
)
IMPORT = Command(
    "import-latents",
    "the paper's precomputed latents (.pt + _dataset.csv) into latent stores",
    ImportSettings,
    import_paper,
    loads="head",
    out="folder of the stores (one per file, named by it: 7b_fr_zh …)",
)
