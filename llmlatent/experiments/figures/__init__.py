"""Every figure builder of the experiments, drawn from tidy frames; ``plots.save`` writes PNG and PDF.

- ``plots``: the paper's styles (probability, entropy and energy curves, pair grids, heatmaps) and ``save``.
- ``precision``: values rounded at their column's scale before they are drawn (byte-stable figures).
- ``generation``, ``geometry``, ``patching``, ``steerbench``: the figures of those experiments.

This package's public face is the list below; everything else is imported from the module that defines it.
"""

from llmlatent.experiments.figures.generation import detour_figure, generation_heatmap
from llmlatent.experiments.figures.geometry import OVERLAYS, mds_figure, norm_figure, overlay_figure, read_paper_lines
from llmlatent.experiments.figures.patching import patching_figure, patching_mean_figure
from llmlatent.experiments.figures.plots import (
    energy_figure,
    heatmap,
    latent_languages_figure,
    pair_grid,
    position_heatmap,
    probability_figure,
    save,
    steering_heatmap,
    top_token_heatmap,
    variants_figure,
)
from llmlatent.experiments.figures.steerbench import benchmark_heatmaps, score_matrix

__all__ = [
    "OVERLAYS",
    "benchmark_heatmaps",
    "detour_figure",
    "energy_figure",
    "generation_heatmap",
    "heatmap",
    "latent_languages_figure",
    "mds_figure",
    "norm_figure",
    "overlay_figure",
    "pair_grid",
    "patching_figure",
    "patching_mean_figure",
    "position_heatmap",
    "probability_figure",
    "read_paper_lines",
    "save",
    "score_matrix",
    "steering_heatmap",
    "top_token_heatmap",
    "variants_figure",
]
