"""The language-steering experiments on one core.

- ``core``: prompt frames, concept splits, items (a library ``Setting`` with its labels), batches, ``evaluate``,
  ``summarize``, ``choose``, controls; ``score``: the scorers (the output language judged by
  :class:`llmlatent.languages.scripts.OutputJudge`); ``fit``: the fit latent stores.
- the demo (``steer``): ``plan`` (settings), ``report`` (summaries, best.json), ``demo`` (one pair, top to bottom).
- ``bench/``: the benchmark (``steer-bench``), every ordered pair × method.

This package's public face is the list below (a notebook's names); everything else is imported from the module
that defines it.
"""

from llmlatent.experiments.steering.plan import DEFAULT_ALPHAS, SteeringSettings
from llmlatent.experiments.steering.report import generation_table, read_results, report_table

__all__ = ["DEFAULT_ALPHAS", "SteeringSettings", "generation_table", "read_results", "report_table"]
