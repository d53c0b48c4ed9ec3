"""The multilingual steering benchmark: every ordered language pair, four vector methods, held-out selection

This package's public face is the list below (a notebook's names); everything else is imported from the module
that defines it.
"""

from llmlatent.experiments.steering.bench.bench import read_results
from llmlatent.experiments.steering.bench.plan import SteerBenchSettings

__all__ = ["SteerBenchSettings", "read_results"]
