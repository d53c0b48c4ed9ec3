"""The experiments: library calls turned into result folders, figures and the paper's runs (see README.md here).

:data:`EXPERIMENTS` is the one list of them. The command line builds one subcommand per entry (flags from its
settings, name and help from the entry), and :func:`llmlatent.experiments.runs.run` finds an experiment there by its
settings class. Adding an experiment is one new module declaring ``EXPERIMENT`` and one line below.

The package:

- ``base``: the two shapes of an entry (``Experiment``: a cached result folder through ``runs.run``; ``Command``: a
  settings-driven command without one) and ``Clock``.
- ``settings``: the ``Settings`` base, ``option()``, ``ModelOptions`` and the flags generated from the fields.
- ``runs``: ``run`` (cache key, reuse or compute, atomic folder, record); ``reproduce``: ``make reproduce``.
- The experiments: ``sweep`` (the lens sweep), ``steering.demo`` (steering one pair), ``patching``, ``detour``,
  ``geometry``, ``steering.bench.bench`` (the steering benchmark).
- The commands: ``lens`` (one prompt's top tokens), ``cache`` (``cache``, ``import-latents``: latent stores).
- ``views``: notebook views of sweeps; ``figures/``: every figure builder; ``steering/``: the steering core.
"""

from __future__ import annotations

from llmlatent.experiments import cache, detour, geometry, lens, patching, sweep
from llmlatent.experiments.base import Command, Experiment
from llmlatent.experiments.steering import demo
from llmlatent.experiments.steering.bench import bench

EXPERIMENTS: tuple[Experiment | Command, ...] = (
    sweep.EXPERIMENT,
    demo.EXPERIMENT,
    patching.EXPERIMENT,
    detour.EXPERIMENT,
    bench.EXPERIMENT,
    geometry.EXPERIMENT,
    lens.COMMAND,
    cache.COMMAND,
    cache.IMPORT,
)
