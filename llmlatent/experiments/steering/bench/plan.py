"""Settings of the steering benchmark and the prompts' input languages, fixed before any model work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from llmlatent.errors import DataError, UsageError
from llmlatent.experiments.settings import Settings, option
from llmlatent.experiments.steering.core import checked_alphas, default_layers
from llmlatent.languages.registry import PAPER, codes, parse_codes
from llmlatent.steering.language_means import METHODS
from llmlatent.steering.vector import check_count, check_layer

if TYPE_CHECKING:
    from llmlatent.model import Model

DEFAULT_ALPHAS = (1.0, 2.0, 4.0)
DEFAULT_N_CONCEPTS = 60  # 20 fit + 20 select + 20 test concepts
DEFAULT_N_LAYERS = 3  # candidate layers spread over 30-90 % of the depth


def parse_langs(langs: Sequence[str] | str, words: str | None = None) -> tuple[str, ...]:
    """Return the benchmark's languages, checked: available codes (bundled or in ``words``), no duplicates, at least
    two (the one place to parse)."""
    try:
        # parse_codes reads any sequence of codes (its annotation names tuples and lists)
        return parse_codes(cast("str | tuple[str, ...] | list[str]", langs), words, flag="--langs", at_least=2)
    except DataError as exc:
        raise UsageError(str(exc)) from None


@dataclass(frozen=True)
class SteerBenchSettings(Settings):
    """Every ordered pair of ``langs``, four vector methods, (layer, α) chosen on select concepts, reported on test."""

    langs: tuple[str, ...] = option(PAPER, "languages; every ordered pair is steered (e.g. en,fr,de,ru,zh)")
    methods: tuple[str, ...] = option(METHODS, f"vector methods ({', '.join(METHODS)})")
    layers: tuple[int, ...] | None = option(
        None, f"layers (after block i, 0-based), e.g. 5,9 (default: {DEFAULT_N_LAYERS} spread over 30-90% of depth)"
    )
    alphas: tuple[float, ...] = option(DEFAULT_ALPHAS, "multiples of the layer's common norm, 0 < α ≤ 100")
    n_concepts: int = option(DEFAULT_N_CONCEPTS, "concepts used, cut into fit / select / test thirds")
    n_vias: int = option(4, "input languages of each language's fit prompts (its μ averages over them)")
    seed: int = option(0, "seed of the splits, the few-shot examples and the random controls")
    n_random: int = option(1, "random directions of the common norm per chosen setting (the control)")
    max_new_tokens: int = option(3, "greedy generation length (language forcing is judged on it)")
    words_dir: str | None = option(
        None, "folder of word CSVs (bundled or seed layout)", digest=True, aliases=("--words",), key_name="words"
    )
    latents_dir: str | None = option(
        None,
        "folder of the fit latent stores, reused by reruns (default: <LLMLATENT_CACHE>/steerbench-latents)",
        key=False,
        aliases=("--latents", "--store-dir"),
    )
    batch_size: int = option(32, "prompts per prefix cache (its groups enter the key, as float rounding may differ)")
    progress: bool = option(True, "progress bar", key=False, cli=False)

    def __post_init__(self) -> None:
        self._set("langs", parse_langs(self.langs, self.words_dir))
        methods = tuple(dict.fromkeys(self.methods))
        for name in methods:
            if name not in METHODS:
                self.fail(f"--methods: unknown method {name!r}; choose from {', '.join(METHODS)}")
        if not methods:
            self.fail(f"--methods is empty; choose from {', '.join(METHODS)}")
        self._set("methods", methods)
        if self.layers is not None:
            self._set("layers", tuple(sorted({check_count(x, "layers", minimum=0) for x in self.layers})))
            if not self.layers:
                self.fail("layers is empty; give at least one layer (after block i, 0-based) or None for the default")
        self._set("alphas", checked_alphas(self.alphas, self.fail, "multiples of the layer's common norm"))
        check_count(self.n_concepts, "n_concepts", minimum=3)
        check_count(self.n_vias, "n_vias", minimum=1)
        check_count(self.seed, "seed")
        check_count(self.n_random, "n_random")
        check_count(self.max_new_tokens, "max_new_tokens", minimum=1)
        check_count(self.batch_size, "batch_size", minimum=1)

    def layers_for(self, n_layers: int) -> list[int]:
        """Return the candidate layers on a model of ``n_layers`` blocks (the default spread, or the given ones)."""
        if self.layers is None:
            return default_layers(n_layers, DEFAULT_N_LAYERS)
        return [check_layer(x, n_layers) for x in self.layers]

    def key_inputs(self, model: Model) -> dict:
        """Return the model-dependent key inputs: the resolved layers."""
        return {"layers": self.layers_for(model.n_layers)}

    def pairs(self) -> list[tuple[str, str]]:
        """Return every ordered pair (source, target) of ``langs``, in their order."""
        return [(s, t) for s in self.langs for t in self.langs if s != t]

    def vias(self, lang: str) -> list[str]:
        """Return the input languages of ``lang``'s fit prompts: up to ``n_vias`` of the others, in order."""
        return [x for x in self.langs if x != lang][: self.n_vias]

    def via(self, source: str, target: str) -> str:
        """Return the input language of the steered source → target prompts: the first language not in the pair.

        A third language keeps the prompt from showing the target word (a t → s prompt steered to t could
        copy its input). Two languages alone take it from the other available languages (the paper's five first).
        """
        return next(x for x in (*self.langs, *codes(self.words_dir)) if x not in (source, target))

    def wrong(self, source: str, target: str) -> str | None:
        """Return X of the wrong-pair control μ_X − μ_source: the first language of ``langs`` not in the pair."""
        return next((x for x in self.langs if x not in (source, target)), None)
