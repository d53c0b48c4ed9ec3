"""Settings of an experiment: a frozen dataclass that holds every default once and validates once.

A field is declared with :func:`option`, which records its help text, command-line aliases and whether it
enters the cache key. The command line is generated from these fields (:func:`add_flags`,
:func:`from_args`): ``n_prompts: int | None = option(None, "…", aliases=("--n",))`` becomes
``--n-prompts N`` (and ``--n``); a ``bool`` field defaulting to False becomes ``--name``, one defaulting
to True becomes ``--no-name``; a tuple field takes several values (``--layers 5 7 9`` or ``--layers 5,7,9``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmlatent.atomic import file_sha256
from llmlatent.errors import UsageError

MISSING = dataclasses.MISSING


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    aliases: Sequence[str] = (),
    key: bool = True,
    digest: bool = False,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
    positional: bool = False,
    key_name: str | None = None,
) -> Any:
    """Return a dataclass field carrying its command-line help, aliases and cache-key role.

    ``key=False``: the value does not change the result (batch size, a cache folder) and stays out of the
    cache key. ``digest=True``: a file or folder whose *content* (sha256) enters the key instead of its
    path. ``parse`` turns one command-line string into the value (e.g. ``de:fr`` → ``("de", "fr")``).
    ``cli=False``: an API-only field (no flag). ``positional=True``: a positional argument instead of a flag (a
    tuple takes one or more values, each kept whole).
    ``cli=False``: an API-only field (no flag). ``key_name``: the name the field had in cache keys written
    before a rename, kept in the key so that those results are still reused.
    """
    meta = {
        "help": help,
        "aliases": tuple(aliases),
        "key": key,
        "digest": digest,
        "choices": choices,
        "parse": parse,
        "metavar": metavar,
        "cli": cli,
        "positional": positional,
        "key_name": key_name,
    }
    return dataclasses.field(default=default, metadata=meta, compare=key)  # equal settings = equal results


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every experiment's settings: values validated in ``__post_init__`` (no file read; a bad value raises
    UsageError), files in :meth:`preflight`."""

    def fail(self, message: str) -> typing.NoReturn:
        """Raise a UsageError with ``message`` (one line: what is wrong and how to fix it)."""
        raise UsageError(message)

    def preflight(self) -> None:
        """Return None after checking what the settings name on disk (files exist and parse, languages are known).

        ``runs.run`` and the command line call it before the model loads; the base class has nothing to check.
        """

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field in ``__post_init__`` (the dataclass is frozen once built)."""
        object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return every field as JSON-able values (tuples become lists, paths strings); API-only plumbing is left
        out."""
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata.get("cli", True) or f.metadata.get("key", True)
        }

    def key_fields(self) -> dict[str, Any]:
        """Return the fields that shape the result: ``digest`` fields by content hash, ``key=False`` ones left out."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("key", True):
                continue
            value = getattr(self, f.name)
            name = f.metadata.get("key_name") or f.name
            out[name] = content_digest(value) if f.metadata.get("digest") else _jsonable(value)
        return out


def content_digest(path: str | Path | None) -> str | None:
    """Return a sha256 over a file, or over every CSV under a folder (names and contents); None for None.

    None stands for the bundled data, which the package version in every key already pins.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*.csv")):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "path") and not isinstance(value, str | int | float | bool):  # a latent store: its folder
        return str(value.path)
    return value


# ---------------------------------------------------------------- the command line, generated from the fields


def flag_name(name: str) -> str:
    """Return the flag of a field name (``n_prompts`` → ``--n-prompts``)."""
    return "--" + name.replace("_", "-")


def _base_type(hint: Any) -> tuple[Any, bool]:
    """Return (the hint without ``| None``, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _split(kind: Callable[[str], Any], flag: str) -> Callable[[list[str]], tuple]:
    def convert(values: list[str]) -> tuple:
        try:
            return tuple(kind(x.strip()) for part in values for x in part.split(",") if x.strip())
        except ValueError as exc:
            what = "whole numbers" if kind is int else "numbers" if kind is float else "values"
            got = " ".join(values)
            raise UsageError(f"{flag} takes {what} (e.g. {flag} 5 7 9 or {flag} 5,7,9), got {got}") from exc

    return convert


def add_flags(parser: argparse.ArgumentParser, cls: type[Settings], *, skip: Sequence[str] = ()) -> None:
    """Add one flag per field of ``cls`` (name, type, default and help from the field) to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        meta, (kind, _) = f.metadata, _base_type(hints[f.name])
        if meta.get("positional"):
            text = meta.get("help", "").replace("%", "%%")
            nargs = "+" if typing.get_origin(kind) is tuple else None
            parser.add_argument(f.name, help=text, metavar=meta.get("metavar"), nargs=nargs)
            continue
        names = [flag_name(f.name), *meta.get("aliases", ())]
        default = None if f.default is MISSING else f.default
        shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
        text = meta.get("help", "")
        if kind is bool:
            off = [flag_name("no_" + f.name)] if default else names
            parser.add_argument(
                *(off if default else names),
                dest=f.name,
                help=f"skip {text}" if default else text,
                action="store_false" if default else "store_true",
                default=argparse.SUPPRESS,
            )
            continue
        text += "" if default in (None, ()) or "default" in text else f" (default: {shown})"
        extra: dict[str, Any] = {"choices": meta["choices"]} if meta.get("choices") else {}
        if typing.get_origin(kind) is tuple and meta.get("parse") is None:  # a parser takes one string
            items = typing.get_args(kind)
            extra["nargs"] = "+" if len(items) != 2 or items[1] is Ellipsis else 2
        if meta.get("metavar"):
            extra["metavar"] = meta["metavar"]
        parser.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, help=text.replace("%", "%%"), **extra)


def from_args(cls: type[Settings], args: argparse.Namespace, **overrides: Any) -> Settings:
    """Return ``cls`` built from the parsed flags that were given (the rest keep the dataclass defaults)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        raw, (kind, _) = getattr(args, f.name), _base_type(hints[f.name])
        if f.metadata.get("positional") and isinstance(raw, list):
            values[f.name] = tuple(raw)  # positional values are kept whole (a path may hold a comma)
            continue
        values[f.name] = convert(raw, kind, f.metadata.get("parse"), flag_name(f.name))
    return cls(**{**values, **overrides})


def convert(raw: Any, kind: Any, parse: Callable[[str], Any] | None, flag: str) -> Any:
    """Return a command-line value as the field's type (``parse`` first, then tuples, numbers and paths)."""
    if raw is None or isinstance(raw, bool):
        return raw
    if parse is not None:
        return parse(raw)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return _split(item if item in (int, float) else str, flag)(raw if isinstance(raw, list) else [raw])
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError as exc:
            raise UsageError(f"{flag} must be a{'n integer' if kind is int else ' number'}, got {raw!r}") from exc
    return raw


@dataclasses.dataclass(frozen=True)
class ModelOptions(Settings):
    """Which model to load and how: the options every command that loads a model shares (declared once)."""

    model: str | None = option(None, "HF id or local path (default: embedded google/gemma-3-270m)")
    dtype: str | None = option(
        None, "default: float32 on CPU, bfloat16 on GPU", choices=("float32", "bfloat16", "float16")
    )
    device: str | None = option(None, "cpu, cuda, cuda:1 … (default: cuda if available)")
    device_map: str | None = option(None, "'auto' to spread a large model over GPUs (accelerate)")
    trust_remote_code: bool = option(False, "allow model code from the hub (only if you trust it)")

    def load(self) -> Any:
        """Return the loaded model (:func:`llmlatent.model.load`); under torchrun each rank takes its own GPU unless
        ``device`` or ``device_map`` is given."""
        from llmlatent import model

        return model.load(
            self.model,
            dtype=self.dtype,
            device=self.device if self.device is not None or self.device_map is not None else rank_device(),
            device_map=self.device_map,
            trust_remote_code=self.trust_remote_code,
        )


def rank_device() -> str | None:
    """Return ``cuda:<LOCAL_RANK>`` in a process of a torchrun group (``WORLD_SIZE`` > 1) with GPUs, else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return f"cuda:{int(os.environ.get('LOCAL_RANK', os.environ.get('RANK', '0')))}"
