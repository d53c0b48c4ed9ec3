"""Every figure builder of the experiments, drawn from tidy frames; ``plots.save`` writes PNG and PDF.

- ``plots``: the paper's styles (probability, entropy and energy curves, pair grids, heatmaps) and ``save``.
- ``precision``: values rounded at their column's scale before they are drawn (byte-stable figures).
- ``generation``, ``geometry``, ``patching``, ``steerbench``: the figures of those experiments.
"""
