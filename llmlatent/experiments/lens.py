"""``python -m llmlatent lens``: the top tokens of every layer for one hand-written prompt, printed.

With ``--generate N`` the lens follows a greedy generation instead: the top-1 token of every layer × generated
token is printed, ``--out`` gets the tidy rows and ``--figure`` the heatmap. Every flag is checked by
:class:`LensSettings` (one line) before :func:`main` loads the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmlatent import checks
from llmlatent.experiments.base import Command
from llmlatent.experiments.settings import Settings, option

if TYPE_CHECKING:
    from llmlatent.model import Model


@dataclass(frozen=True)
class LensSettings(Settings):
    """One prompt's top tokens at every layer; ``generate`` > 0: along that many greedily generated tokens."""

    prompt: str = option(help='the prompt; \\n and \\" escapes are interpreted', positional=True)
    k: int = option(5, "top tokens per layer", aliases=("-k",))
    out: str | None = option(None, "also write the tidy table to this CSV")
    escapes: bool = option(True, 'interpreting \\n, \\t and \\" in the prompt (take it literally)')
    generate: int = option(0, "lens of each of N greedily generated tokens", metavar="N")
    figure: str | None = option(None, "--generate: heatmap PNG+PDF path (default: --out without .csv)")
    colour: str = option("probability", "--generate: heatmap colour, probability or p_<lang>")
    langs: str | None = option(None, "--generate: languages of the word sets and tags (default: all)")
    concepts: str | None = option(None, "--generate: concepts of the word sets (default: in the prompt)")

    def __post_init__(self) -> None:
        if not self.text.strip():
            self.fail("the prompt is empty; pass some text")
        checks.count(self.k, "k", flag="-k")
        if self.out:
            checks.output_file(self.out, "out")
        if self.generate:
            checks.count(self.generate, "generate", flag="--generate")
            langs = self.languages()
            if self.colour != "probability" and self.colour.removeprefix("p_") not in langs:
                self.fail(
                    f"--colour must be probability or p_<lang> of --langs ({', '.join(langs)}), got {self.colour}"
                )

    def preflight(self) -> None:
        """Return None after checking ``--concepts`` against the word files of ``--langs`` (``--generate`` only)."""
        if self.generate and (concepts := self.concept_list()) is not None:
            from llmlatent.languages.scripts import check_concepts
            from llmlatent.languages.words import read_table

            check_concepts(concepts, read_table(list(self.languages())).set_index("concept"))

    @property
    def text(self) -> str:
        """Return the prompt with its ``\\n``, ``\\t`` and ``\\"`` escapes interpreted (unless ``escapes`` is off)."""
        if not self.escapes:
            return self.prompt
        return self.prompt.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')

    def languages(self) -> tuple[str, ...]:
        """Return the languages of ``--langs`` (default: the paper's)."""
        from llmlatent.languages.registry import PAPER, parse_codes

        return PAPER if self.langs is None else parse_codes(self.langs, flag="--langs")

    def concept_list(self) -> list[str] | None:
        """Return the concepts of ``--concepts`` (None: those in the prompt)."""
        return None if self.concepts is None else [c.strip() for c in self.concepts.split(",") if c.strip()]

    def figure_path(self) -> str | None:
        """Return the heatmap's path without suffix: ``--figure``, else ``--out`` without ``.csv``, else None."""
        return self.figure or (str(Path(self.out).with_suffix("")) if self.out else None)


def main(settings: LensSettings, load: Callable[[], Model], out: str | None = None, force: bool = False) -> None:
    """Return None after printing the lens of ``settings.prompt`` on ``load()``'s model (and writing ``--out``)."""
    model = load()
    if settings.generate:
        along_generation(model, settings)
    else:
        top_tokens(model, settings)


def top_tokens(model: Model, settings: LensSettings) -> None:
    """Return None after printing the top-k tokens of every layer (wide) and writing the tidy table (``--out``)."""
    import pandas as pd

    from llmlatent.atomic import atomic_file
    from llmlatent.lens import last_token as lens

    table = lens.top_tokens(model, settings.text, k=settings.k)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 24):
        print(lens.top_tokens_wide(table).to_string())
    if settings.out:
        with atomic_file(settings.out) as tmp:  # complete under its name, or not there at all
            table.to_csv(tmp, index=False)


def along_generation(model: Model, settings: LensSettings) -> None:
    """Return None after printing the top-1 token of every layer × generated token; write the tidy CSV (``--out``)
    and the heatmap (``--figure``)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from llmlatent.atomic import atomic_file
    from llmlatent.experiments.figures import generation as genplots
    from llmlatent.experiments.figures import plots
    from llmlatent.lens import generation as genlens

    gen = genlens.words_generation(
        model,
        settings.text,
        settings.languages(),
        concepts=settings.concept_list(),
        max_new_tokens=settings.generate,
        k=settings.k,
    )
    top = gen.rows[gen.rows["rank"] == 1]
    wide = top.pivot(index="layer", columns="step", values="token").map(lambda t: repr(t)[1:-1])
    wide.columns = [repr(t)[1:-1] for t in top.drop_duplicates("step")["generated_token"]]
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(f"generated: {gen.texts[0]!r}")
        print(wide.to_string())
    if settings.out:
        with atomic_file(settings.out) as tmp:
            gen.rows.to_csv(tmp, index=False, float_format="%.8g")
    figure = settings.figure_path()
    if figure:
        fig = genplots.generation_heatmap(gen.rows, colour=settings.colour, title=f"{model.name}: {gen.texts[0]!r}")
        plots.save(fig, figure)
        plt.close(fig)


COMMAND = Command("lens", "top tokens of every layer for a hand prompt", LensSettings, main)
