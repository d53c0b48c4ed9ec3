"""``python -m llmlatent lens --generate N``: the lens along a greedy generation (a face beside ``cli``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llmlatent.errors import UsageError

if TYPE_CHECKING:
    from llmlatent.model import Model


def lens_generation(args: argparse.Namespace, prompt: str, load_model: Callable[[argparse.Namespace], Model]) -> int:
    """Print the top-1 token of every layer × generated token; write the tidy CSV (--out) and the heatmap (--figure)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from llmlatent import checks
    from llmlatent.experiments.figures import generation as genplots
    from llmlatent.experiments.figures import plots
    from llmlatent.lens import generation as genlens

    checks.count(args.generate, "generate", flag="--generate")
    from llmlatent.languages.registry import PAPER, parse_codes

    langs = PAPER if args.langs is None else parse_codes(args.langs, flag="--langs")
    concepts = None if args.concepts is None else [c.strip() for c in args.concepts.split(",") if c.strip()]
    if args.colour != "probability" and args.colour.removeprefix("p_") not in langs:
        raise UsageError(f"--colour must be probability or p_<lang> of --langs ({', '.join(langs)}), got {args.colour}")
    if concepts is not None:
        from llmlatent.languages.scripts import check_concepts
        from llmlatent.languages.words import read_table

        check_concepts(concepts, read_table(list(langs)).set_index("concept"))
    figure = args.figure or (str(Path(args.out).with_suffix("")) if args.out else None)
    m = load_model(args)
    gen = genlens.words_generation(m, prompt, langs, concepts=concepts, max_new_tokens=args.generate, k=args.k)
    top = gen.rows[gen.rows["rank"] == 1]
    wide = top.pivot(index="layer", columns="step", values="token").map(lambda t: repr(t)[1:-1])
    wide.columns = [repr(t)[1:-1] for t in top.drop_duplicates("step")["generated_token"]]
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(f"generated: {gen.texts[0]!r}")
        print(wide.to_string())
    if args.out:
        from llmlatent.atomic import atomic_file

        with atomic_file(args.out) as tmp:
            gen.rows.to_csv(tmp, index=False, float_format="%.8g")
    if figure:
        fig = genplots.generation_heatmap(gen.rows, colour=args.colour, title=f"{m.name}: {gen.texts[0]!r}")
        plots.save(fig, figure)
        plt.close(fig)
    return 0
