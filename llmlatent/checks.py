"""Argument validators shared by the API and the command line (one place, one message per bad value).

Each raises :class:`llmlatent.errors.UsageError` naming the argument by its API name and, where it
differs, its command-line flag, so the same line serves a notebook and a shell user.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, overload

import torch

from llmlatent.errors import UsageError


def _label(name: str, flag: str | None) -> str:
    flag = flag or "--" + name.replace("_", "-")
    return f"{name} ({flag})" if flag.lstrip("-") != name else flag


@overload
def count(
    value: int | None,
    name: str,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    flag: str | None = None,
    optional: Literal[False] = False,
) -> int: ...


@overload
def count(
    value: int | None,
    name: str,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    flag: str | None = None,
    optional: bool,
) -> int | None: ...


def count(
    value: int | None,
    name: str,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    flag: str | None = None,
    optional: bool = False,
) -> int | None:
    """Return ``value`` as an int after checking ``minimum ≤ value ≤ maximum`` (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise UsageError(f"{_label(name, flag)} must be a whole number, got {value!r}")
    value = int(value)
    if value < minimum:
        raise UsageError(f"{_label(name, flag)} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{_label(name, flag)} must be at most {maximum}, got {value}")
    return value


def input_file(path: str | os.PathLike, name: str, *, flag: str | None = None) -> Path:
    """Return ``path`` as a Path after checking that it is an existing, readable file."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{_label(name, flag)}: {p} does not exist")
    if p.is_dir():
        raise UsageError(f"{_label(name, flag)}: {p} is a folder; pass a file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{_label(name, flag)}: {p} is not readable")
    return p


def output_file(path: str | os.PathLike, name: str, *, flag: str | None = None) -> Path:
    """Return ``path`` as a Path after checking a file can be written there (not a folder; parent exists, writable)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{_label(name, flag)}: {p} is a folder; pass a file path such as {p / 'table.csv'}")
    parent = p.parent
    if not parent.is_dir():
        raise UsageError(f"{_label(name, flag)}: the folder {parent} does not exist; create it or pass another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{_label(name, flag)}: {p} is not writable; pass a writable path")
    return p


def layer(value: int, n_layers: int, *, error: type[Exception] = UsageError) -> int:
    """Return ``value`` as an int if it is a block index 0 ≤ value < n_layers, else raise ``error`` saying the range."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError as exc:
        raise error(f"layer must be an integer (after block i, 0-based), got {value!r}") from exc
    if not 0 <= value < n_layers:
        raise error(f"layer {value} is out of range: the model has {n_layers} blocks, layers 0 … {n_layers - 1}")
    return int(value)


@contextlib.contextmanager
def quiet(logger: logging.Logger) -> Iterator[None]:
    """Yield with ``logger`` disabled (a check that reads input again later, when its warnings are shown)."""
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def torch_dtype(value: torch.dtype | str | None, name: str = "dtype") -> torch.dtype | None:
    """Return ``value`` as a floating torch.dtype (a dtype, or its name such as ``"bfloat16"``; None stays None).

    Models run in floating point only: ``int8`` and other integer or boolean dtypes are refused here, with one
    line, instead of by transformers after the model's files are read.
    """
    if value is None:
        return None
    found = value if isinstance(value, torch.dtype) else getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise UsageError(
            f"{_label(name, None)} must be a torch dtype of floating point, such as float32 or bfloat16, got {value!r}"
        )
    return found
