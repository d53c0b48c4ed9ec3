"""The paper's own precomputed latents (the Hugging Face dataset ``wendlerc/llm-latent-language``) into a store.

The dataset holds ``translation/{size}_{src}_{tgt}_latents.pt`` (repetition as ``en_en`` …) and
``cloze/{size}_{lang}_latents.pt``: each is ``torch.save`` of one float32 tensor ``[prompts, blocks, hidden]``,
the raw output of every decoder block at the last prompt token (no embedding layer, no final norm), computed
by the paper's authors from Llama-2 loaded in 8-bit. Beside each sits ``{same name}_dataset.csv`` (without
``_latents``): row i is the prompt of tensor row i, with columns ``prompt, out_token_id, out_token_str,
latent_token_id, latent_token_str, in_token_str`` (id lists as Python list strings, ``"[29871, 30488]"``).

:func:`import_paper` checks the file (:func:`read_paper_file`: ``torch.load(weights_only=True)`` only, one
finite floating tensor of rank 3), the CSV and the model's config before anything is written, recomputes the
token sets from the ``_str`` columns with this package's rule, and writes a latent store
(:func:`llmlatent.latents.store.write_latents`) whose meta records where the latents came from.
"""

from __future__ import annotations

import ast
import json
import math
import os
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from llmlatent.atomic import file_sha256
from llmlatent.errors import DataError
from llmlatent.languages.registry import PAPER, label
from llmlatent.languages.words import read_csv
from llmlatent.latents.format import LatentStoreError, check_store_dir
from llmlatent.latents.store import LatentStore, write_latents
from llmlatent.tasks import PromptSet
from llmlatent.tokens import token_set, tokenizer_identity

if TYPE_CHECKING:
    from llmlatent.adapter import LoadedHead
    from llmlatent.model import Model

NOTE = "latents computed by the paper's authors from 8-bit Llama-2"
SOURCE = "wendlerc/llm-latent-language"
NAME = re.compile(r"^(?P<size>\d+b)_(?P<langs>[a-z]{2}(?:_[a-z]{2})?)_latents$")
LAYOUT = "{size}_{src}_{tgt}_latents.pt or {size}_{lang}_latents.pt (e.g. 7b_fr_zh_latents.pt)"
ID_COLUMNS = {"target_ids": "out_token_id", "english_ids": "latent_token_id"}
REQUIRED = ("prompt", "out_token_id", "out_token_str", "latent_token_id", "latent_token_str")


@dataclass(frozen=True)
class PaperFile:
    """A ``.pt`` of the paper's dataset, what its name says (task, languages, Llama-2 size) and its CSV."""

    pt: Path
    csv: Path
    task: str
    src: str
    tgt: str
    size: str

    @property
    def name(self) -> str:
        """Return the file's name without ``_latents.pt`` (``7b_fr_zh``): the imported store's folder name."""
        return self.pt.name.removesuffix("_latents.pt")

    @property
    def pair(self) -> str:
        """Return the languages as written in the name (``fr_zh``, ``zh_zh``, or ``de`` for cloze)."""
        return self.tgt if self.task == "cloze" else f"{self.src}_{self.tgt}"


def locate(path: str | os.PathLike) -> PaperFile:
    """Return the :class:`PaperFile` of a ``.pt`` named as in the paper's dataset, with its CSV beside it."""
    pt = Path(path)
    if not pt.is_file():
        raise LatentStoreError(f"{pt}: no such file" if not pt.exists() else f"{pt} is not a file")
    match = NAME.match(pt.name.removesuffix(".pt")) if pt.suffix == ".pt" else None
    langs = match["langs"].split("_") if match else []
    if not match or any(lang not in PAPER for lang in langs):
        raise LatentStoreError(f"{pt}: not named like a file of the paper's dataset ({LAYOUT}; languages {PAPER})")
    src, tgt = (langs * 2)[:2] if len(langs) == 1 else langs
    task = "cloze" if len(langs) == 1 else ("repetition" if src == tgt else "translation")
    csv = pt.with_name(f"{pt.name.removesuffix('_latents.pt')}_dataset.csv")
    if not csv.is_file():
        others = sorted(p.name for p in pt.parent.glob("*_dataset.csv"))
        beside = f"beside it: {', '.join(others)}, another pair's" if others else "no _dataset.csv is beside it"
        raise LatentStoreError(
            f"{pt}: its prompts {csv.name} are missing ({beside}); download the .pt with its _dataset.csv"
        )
    return PaperFile(pt, csv, task, src, tgt, match["size"])


def read_paper_file(path: str | os.PathLike) -> torch.Tensor:
    """Return the one float32 tensor ``[prompts, blocks, hidden]`` of a ``.pt`` (``torch.load(weights_only=True)``).

    Anything else is refused with one :class:`LatentStoreError` line naming the file: a dict, a list, a
    pickle that asks to run code (``weights_only`` refuses it before it runs), a truncated or corrupt file,
    another rank, a non-floating or empty tensor, NaN or infinity.
    """
    path = Path(path)
    try:
        value = _load(path)
    except pickle.UnpicklingError as exc:
        wanted = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        asks = f"it asks to call {wanted[1]}" if wanted else "it asks to run code or build objects other than tensors"
        raise LatentStoreError(
            f"{path}: refused, not a plain tensor file: torch.load(weights_only=True) will not load it ({asks}); "
            "nothing was run or written"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        first = re.split(r"(?<=\.)\s", str(exc).strip())[0].strip().rstrip(".") or type(exc).__name__
        raise LatentStoreError(
            f"{path}: cannot be read as a torch.save file (truncated or corrupt: {first}); download it again"
        ) from None
    return check_tensor(value, path)


def _load(path: Path) -> object:
    """Return ``torch.load(path, weights_only=True)``, memory-mapped when the file allows it.

    Memory-mapping (files in torch.save's zip format, as the dataset's are) reads nothing until the
    tensor is used: the finiteness check and the shard writes then read the page cache directly instead of
    a 1 GB copy. A legacy-format file cannot be mapped and is read whole.
    """
    try:
        return torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, weights_only=True, map_location="cpu")


def check_tensor(value: object, path: Path) -> torch.Tensor:
    """Return ``value`` as a float32 tensor if it is one finite floating tensor of rank 3; else LatentStoreError."""
    expected = "one float32 tensor [prompts, blocks, hidden]"
    if not isinstance(value, torch.Tensor):
        kind = type(value).__name__
        raise LatentStoreError(f"{path}: holds a {kind}, not {expected}; is it a file of {SOURCE}?")
    if value.dim() != 3:
        raise LatentStoreError(f"{path}: holds a tensor of rank {value.dim()} {list(value.shape)}, not {expected}")
    if not value.is_floating_point():
        raise LatentStoreError(
            f"{path}: holds a tensor of dtype {str(value.dtype).removeprefix('torch.')}, not {expected}"
        )
    if value.numel() == 0:
        raise LatentStoreError(f"{path}: holds an empty tensor {list(value.shape)}, not {expected}")
    value = value.float()
    # aminmax propagates NaN and keeps ±inf, so both ends are finite exactly when every value is (tested against
    # torch.isfinite); one reduction without a mask is ~15x faster on a 1 GB tensor; the mask only locates a bad one
    low, high = (float(v) for v in torch.aminmax(value))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = ~torch.isfinite(value)
        row, layer, _ = (int(i) for i in bad.nonzero()[0])
        raise LatentStoreError(
            f"{path}: {int(bad.sum())} latent values are NaN or infinite (first: prompt {row}, block {layer}); "
            "download the file again"
        )
    return value


def read_paper_csv(file: PaperFile) -> pd.DataFrame:
    """Return the CSV of a paper file (strings) after checking its columns, id lists and language pair."""
    try:
        frame = read_csv(file.csv, "prompt CSV")
    except DataError as exc:
        raise LatentStoreError(str(exc)) from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise LatentStoreError(f"{file.csv}: missing column(s) {', '.join(missing)} (expected {', '.join(REQUIRED)})")
    for column in ID_COLUMNS.values():
        frame[column] = [_id_list(v, file.csv, row, column) for row, v in enumerate(frame[column])]
    if file.task != "cloze":
        head, tail = f'{label(file.src)}: "', f'{label(file.tgt)}: "'
        for row, prompt in enumerate(frame["prompt"]):
            last = prompt.rstrip(" ").split("\n")[-1]
            if not (last.startswith(head) and last.endswith(tail)):
                raise LatentStoreError(
                    f"{file.csv}: data row {row + 1}'s prompt does not end with a {file.src}→{file.tgt} query "
                    f"({head}…{tail}): it is another pair's CSV; use the _dataset.csv downloaded with {file.pt.name}"
                )
    return frame


def _id_list(value: str, path: Path, row: int, column: str) -> list[int]:
    """Return a CSV cell such as ``"[29871, 30488]"`` as a list of ids; LatentStoreError naming the row otherwise."""
    try:
        ids = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        ids = None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise LatentStoreError(
            f"{path}: data row {row + 1}: {column} {value[:40]!r} is not a list of token ids such as [29871, 30488]"
        )
    return ids


def paper_prompts(file: PaperFile, frame: pd.DataFrame, tokenizer: object) -> tuple[PromptSet, list[int]]:
    """Return (the prompt set of a paper CSV with this package's token sets, the CSV rows it keeps, in order).

    Sets come from ``out_token_str`` (target), ``latent_token_str`` (English) and, for a translation
    whose source is neither English nor the target, ``in_token_str`` (source). Rows with an empty prompt
    or an empty target or English set are dropped (counted); ``meta["paper_token_sets"]`` counts how many
    recomputed sets equal the CSV's stored id lists.
    """
    with_source = file.task == "translation" and file.src not in ("en", file.tgt) and "in_token_str" in frame
    dropped = {"empty_prompt": 0, "empty_target_set": 0, "empty_english_set": 0}
    records, keep, equal = [], [], dict.fromkeys(ID_COLUMNS, 0)
    for row, r in enumerate(frame.to_dict("records")):
        record = _record(file, r, tokenizer, with_source)
        empty = [k for k in ID_COLUMNS if not record[k]]
        if not r["prompt"].strip() or empty:
            dropped["empty_prompt" if not r["prompt"].strip() else f"empty_{empty[0].removesuffix('_ids')}_set"] += 1
            continue
        for column, paper_column in ID_COLUMNS.items():
            equal[column] += sorted(r[paper_column]) == record[column]
        records.append({"prompt_id": len(records), **record, "paper_row": row})
        keep.append(row)
    if not records:
        raise LatentStoreError(f"{file.csv}: every row was dropped ({dropped}); nothing to import")
    counts = {c: {"equal_to_stored": equal[c], "of": len(records), "stored_column": p} for c, p in ID_COLUMNS.items()}
    meta = {"task": file.task, "src": file.src, "tgt": file.tgt, "size": file.size}
    meta.update(dropped=dropped, paper_token_sets=counts)
    return PromptSet(pd.DataFrame(records), dropped, meta, [], tokenizer_identity(tokenizer)), keep


def _record(file: PaperFile, r: dict, tokenizer: object, with_source: bool) -> dict:
    """Return one CSV row as a prompt record: words, prompt, recomputed token sets, the CSV's own id lists."""
    src_word = r.get("in_token_str", "") if file.task != "cloze" else r["out_token_str"]
    return {
        "task": file.task,
        "src": file.src,
        "tgt": file.tgt,
        "concept": r["latent_token_str"].strip(),
        "src_word": src_word.strip(),
        "tgt_word": r["out_token_str"].strip(),
        "en_word": r["latent_token_str"].strip(),
        "prompt": r["prompt"],
        "target_ids": token_set(tokenizer, r["out_token_str"]),
        "english_ids": token_set(tokenizer, r["latent_token_str"]),
        "source_ids": (token_set(tokenizer, src_word) or None) if with_source else None,
        "paper_target_ids": json.dumps(r["out_token_id"]),
        "paper_english_ids": json.dumps(r["latent_token_id"]),
    }


def check_fits(file: PaperFile, latents: torch.Tensor, n_rows: int, source: Model | LoadedHead) -> None:
    """Return None if the tensor has the CSV's row count and the model's blocks and width; else LatentStoreError."""
    n, layers, hidden = latents.shape
    fp = source.fingerprint()
    if n != n_rows:
        raise LatentStoreError(
            f"{file.pt}: {n} prompts in the tensor but {n_rows} data rows in {file.csv.name}; row i of the CSV must be "
            "row i of the tensor (download both files again)"
        )
    if (layers, hidden) != (fp.n_layers, fp.hidden_size):
        raise LatentStoreError(
            f"{file.pt}: latents of {layers} blocks × width {hidden} do not fit {fp.model} ({fp.n_layers} blocks × "
            f"{fp.hidden_size}); pass the Llama-2 size the file is named for ({file.size}) with --model"
        )


def import_paper(
    pt_path: str | os.PathLike,
    source: Model | LoadedHead,
    out_store: str | os.PathLike,
    *,
    dtype: str = "float32",
    shard_size: int | None = None,
    progress: bool = True,
) -> LatentStore:
    """Return the latent store written at ``out_store`` from one ``.pt`` of the paper's dataset and its CSV.

    ``source`` is the model's head (:func:`llmlatent.model.load_unembedding`: config, tokenizer, final norm
    and unembedding only) or a loaded Model. Every check runs before anything is written: the tensor
    (:func:`read_paper_file`), the CSV (columns, id lists, the language pair, the row count) and the model's
    blocks and width. The store's meta records the source file's name and sha256, task, pair, size and
    :data:`NOTE`; rows dropped for empty token sets leave their tensor rows out too.
    """
    tokenizer = getattr(source, "tokenizer", None)
    if tokenizer is None:
        raise LatentStoreError(f"{source.name} has no tokenizer files: the token sets cannot be recomputed")
    file = locate(pt_path)
    frame = read_paper_csv(file)
    out_store = check_store_dir(out_store, shard_size=shard_size)
    with ThreadPoolExecutor(max_workers=1) as pool:  # hashlib releases the GIL: the source's sha256 runs beside
        source_sha256 = pool.submit(file_sha256, file.pt)  # the load, the checks and the token sets
        latents = read_paper_file(file.pt)
        check_fits(file, latents, len(frame), source)
        prompts, keep = paper_prompts(file, frame, tokenizer)
        prompts.meta.update(source=SOURCE, source_file=file.pt.name, source_sha256=source_sha256.result())
    prompts.meta["pair"] = file.pair
    prompts.meta.update(source_csv=file.csv.name, source_csv_sha256=file_sha256(file.csv), n_source_rows=len(frame))
    prompts.meta["note"] = NOTE
    rows = latents if len(keep) == len(frame) else latents[torch.tensor(keep)]
    return write_latents(source, prompts, rows, out_store, dtype=dtype, shard_size=shard_size, progress=progress)


def find_paper_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Return the ``.pt`` files named by ``paths`` (files, or folders searched for every ``.pt`` under them)."""
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            files = sorted(given.rglob("*.pt"))
            if not files:
                raise LatentStoreError(f"{given}: no .pt file under it (the dataset's translation/ and cloze/ folders)")
            found += files
        else:
            found.append(given)
    names = [p.name.removesuffix("_latents.pt") for p in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LatentStoreError(f"two files would be imported into the same store name: {', '.join(twice)}")
    return found
