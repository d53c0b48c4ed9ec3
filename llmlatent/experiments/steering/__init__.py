"""The language-steering experiments: ``demo`` (one pair, held-out (layer, α)), ``evaluate`` and ``report``

This package's public face is the list below (a notebook's names); everything else is imported from the module
that defines it.
"""

from llmlatent.experiments.steering.demo import run_to_dir
from llmlatent.experiments.steering.plan import DEFAULT_ALPHAS, SteeringSettings
from llmlatent.experiments.steering.report import generation_table, read_results, report_table

__all__ = ["DEFAULT_ALPHAS", "SteeringSettings", "generation_table", "read_results", "report_table", "run_to_dir"]
