"""The two shapes of an entry in the experiment list (:data:`llmlatent.experiments.EXPERIMENTS`), and ``Clock``.

- :class:`Experiment`: ``compute(model, settings) → result`` and ``write(result, folder) → record fields``, run by
  :func:`llmlatent.experiments.runs.run` into a cached, atomic result folder.
- :class:`Command`: a settings-driven command that writes no cached result folder (a latent store that resumes, a
  table printed for one prompt): ``main(settings, load, out, force)`` checks what it can, then calls ``load()``.

Each experiment module declares its entry as a module-level constant (``EXPERIMENT = Experiment(...)``); nothing
registers itself on import. The command line builds one subcommand per entry: flags from ``settings``, the
subcommand's name and help from ``command`` and ``help``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from llmlatent.model import Model


@dataclass(frozen=True)
class Experiment:
    """One experiment: ``compute(model, settings) → result`` and ``write(result, folder) → record fields``.

    ``kind`` names its results (in every cache key and record); ``format_version`` is bumped when the content or
    layout of its result folder changes, so old folders are recomputed rather than reused.
    """

    kind: str
    settings: type
    compute: Callable[[Model, Any], Any]
    write: Callable[[Any, Path], dict]
    command: str  # the subcommand of ``python -m llmlatent``
    help: str  # its one-line help
    format_version: int = 1
    record: str = "run.json"
    headline: tuple[str, ...] = ()  # record keys printed by the command line
    describe: Callable[[Any], str] = str  # the settings in a log line


@dataclass(frozen=True)
class Command:
    """A command driven by its settings that writes no cached result folder (a latent store, a printed table).

    ``main(settings, load, out, force)`` runs it: every check that needs no model comes first (one line, a
    ``LlmlatentError``), then ``load()`` returns the model (``loads="model"``) or its head alone (``"head"``).
    ``out`` and ``force`` are the values of ``--out`` and ``--force`` when the entry asks for them (``out``,
    ``force``: their help), else None and False.
    """

    command: str
    help: str
    settings: type
    main: Callable[[Any, Callable[[], Any], str | None, bool], None]
    loads: Literal["model", "head"] = "model"
    out: str | None = None  # help of a required --out (None: no --out, or the settings have their own)
    force: str | None = None  # help of --force (None: no --force)


class Clock:
    """Named wall-clock timings: ``with clock("fit"): …`` adds the block's seconds under ``"fit"``."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        """Return the seconds since the clock was made."""
        return time.perf_counter() - self.started

    def rounded(self) -> dict[str, float]:
        """Return every timing rounded to milliseconds (for a record)."""
        return {k: round(v, 3) for k, v in self.seconds.items()}
