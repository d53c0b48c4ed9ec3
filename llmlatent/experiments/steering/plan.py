"""Settings of the steering demo, fixed before any model work (its splits: :mod:`.core`)."""

from __future__ import annotations

from dataclasses import dataclass

from llmlatent.errors import DataError
from llmlatent.experiments.settings import Settings, option
from llmlatent.experiments.steering.core import checked_alphas, default_layers
from llmlatent.languages.registry import check_lang, codes
from llmlatent.languages.scripts import OutputJudge
from llmlatent.steering.vector import check_count, check_layer

DEFAULT_ALPHAS = (0.5, 1.0, 2.0, 4.0)
DEFAULT_N_CONCEPTS = 96  # 32 fit + 32 select + 32 test concepts


def default_wrong_pair(source: str, target: str, via: str, words: str | None = None) -> tuple[str, str]:
    """Return the wrong-pair control (X, source): X is the first available language (the paper's five first) not in
    {source, target, via}."""
    other = next(lang for lang in codes(words) if lang not in (source, target, via))
    return other, source


@dataclass(frozen=True)
class SteeringSettings(Settings):
    """The RU→ZH-style demo: fit Δ = μ_target − μ_source, choose (layer, α) on select concepts, report on test."""

    source: str = option("ru", "language the steered prompts answer in")
    target: str = option("zh", "language to steer towards")
    via: str = option("fr", "source language of the translation prompts")
    layers: tuple[int, ...] | None = option(
        None, "layers (after block i, 0-based), e.g. 5 7 9 or 5,7,9 (default: 6 spread over 30-90% of the depth)"
    )
    alphas: tuple[float, ...] = option(
        DEFAULT_ALPHAS, "multiples of Δ, 0 < α ≤ 100; 0 = the baseline is always included"
    )
    n_concepts: int | None = option(DEFAULT_N_CONCEPTS, "concepts used, cut into fit / select / test thirds")
    seed: int = option(0, "seed of the splits, the few-shot examples and the random controls")
    max_new_tokens: int = option(5, "greedy generation length")
    n_generate: int = option(16, "test prompts with greedy generations per setting", aliases=("--generate",))
    n_random: int = option(3, "random directions of Δ's norm per direction, the control", aliases=("--random",))
    flip: bool = option(True, "the flip direction (−Δ on target-language prompts)")
    n_flip: int | None = option(
        16, "target-language prompts per split (select, test) for the flip direction", aliases=("--flip-prompts",)
    )
    wrong_pair: tuple[str, str] | None = option(
        None,
        "the wrong-pair control μ_TOWARDS − μ_AWAY_FROM at Δ's norm (default: en ru for ru→zh via fr)",
        metavar=("TOWARDS", "AWAY_FROM"),
    )
    words_dir: str | None = option(
        None, "folder of word CSVs (bundled or seed layout)", digest=True, aliases=("--words",), key_name="words"
    )
    latents_dir: str | None = option(
        None,
        "keep the fit latent stores in this folder and reuse them on reruns (default: temporary)",
        key=False,
        aliases=("--latents", "--store-dir"),
    )
    reuse_stores: tuple[str, ...] = option(
        (), "latent stores (e.g. from `cache`) searched for the fit prompts before computing them", key=False
    )
    batch_size: int = option(16, "prompts per forward (its prefix groups enter the key, as float rounding may differ)")
    reuse_prefix: bool = option(True, "one KV cache of each prompt batch's prefix", cli=False)
    progress: bool = option(True, "progress bar", key=False, cli=False)

    def __post_init__(self) -> None:
        for lang in (self.source, self.target, self.via):
            check_lang(lang, self.words_dir)
        if len({self.source, self.target, self.via}) < 3:
            raise DataError(
                f"source, target and via must be three different languages "
                f"(got {self.source}, {self.target}, {self.via})"
            )
        if self.layers is not None:
            self._set("layers", tuple(sorted({check_count(x, "layers", minimum=0) for x in self.layers})))
            if not self.layers:
                self.fail("layers is empty; give at least one layer (after block i, 0-based) or None for the default")
        self._set("alphas", self._checked_alphas())
        if self.n_concepts is not None:
            check_count(self.n_concepts, "n_concepts", minimum=3)
        if self.n_flip is not None:
            check_count(self.n_flip, "n_flip", minimum=1)
        self._set("wrong_pair", self._checked_wrong_pair())
        for name in ("seed", "n_generate", "n_random"):
            check_count(getattr(self, name), name)
        check_count(self.max_new_tokens, "max_new_tokens", minimum=1)
        check_count(self.batch_size, "batch_size", minimum=1)
        self._set("reuse_stores", tuple(self.reuse_stores or ()))
        self.judge()  # every judged language has a known script before the model loads

    def judge(self) -> OutputJudge:
        """Return the output-language judge of the languages in play (source, target, via, the wrong pair)."""
        return OutputJudge((self.source, self.target, self.via, *self.wrong_pair), self.words_dir)

    def _checked_alphas(self) -> tuple[float, ...]:
        alphas = DEFAULT_ALPHAS if self.alphas is None else self.alphas  # None: the defaults
        return checked_alphas(alphas, self.fail, "multiples of Δ; the flip direction covers −Δ")

    def _checked_wrong_pair(self) -> tuple[str, str]:
        s = self
        pair = default_wrong_pair(s.source, s.target, s.via, s.words_dir) if s.wrong_pair is None else s.wrong_pair
        pair = tuple(pair)
        if len(pair) != 2 or pair[0] == pair[1]:
            self.fail(f"wrong_pair must be two different languages (towards, away from), got {pair!r}")
        for lang in pair:
            check_lang(lang, self.words_dir)
        if self.via in pair:
            self.fail(
                f"wrong_pair must not use the prompts' source language {self.via!r}: "
                f"{self.via}→{self.via} is no translation"
            )
        if set(pair) == {self.source, self.target}:
            self.fail(
                f"wrong_pair {pair} is Δ itself (or −Δ); pick another pair, e.g. "
                f"{default_wrong_pair(self.source, self.target, self.via)}"
            )
        return pair

    def layers_for(self, n_layers: int) -> list[int]:
        """Return the candidate layers on a model of ``n_layers`` blocks (the default spread, or the given ones)."""
        return default_layers(n_layers) if self.layers is None else [check_layer(x, n_layers) for x in self.layers]

    def key_inputs(self, model: object) -> dict:
        """Return the model-dependent key inputs: the resolved layers and the prompts of any reused latent store."""
        from llmlatent.experiments.steering.fit import open_stores

        stores = open_stores(self.reuse_stores)
        return {
            "layers": self.layers_for(model.n_layers),
            "reuse_stores": [{"prompts_sha256": s.config["prompts_sha256"], "dtype": s.dtype} for s in stores],
        }
