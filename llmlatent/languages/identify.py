"""Language identification of short generations: lingua's offline detector, with the concept's token sets first.

:class:`LanguageId` builds one ``lingua`` detector, restricted to the languages in play (a text is always
judged among them, so a Latin-script word is never called Catalan or Latin). lingua is reliable on a few
words but guesses on one short word, and same-script cognates (``hotel`` in en, fr and de) have no
answer at all. So :meth:`LanguageId.forced` trusts the concept's own token set first: when the first
generated token is in the target language's token set of the concept (the paper's token-set rule,
:mod:`llmlatent.tokens`), the generation is in the target language whatever lingua says; otherwise
lingua decides. Empty text, digits and punctuation have no language (None).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from llmlatent.errors import DataError


@functools.lru_cache(maxsize=8)
def _detector(codes: tuple[str, ...]) -> Any:
    """Return the lingua detector of ``codes`` (built once per set of languages; its models load on first use)."""
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    isos = []
    for code in codes:
        iso = getattr(IsoCode639_1, code.upper(), None)
        if iso is None:
            raise DataError(f"lingua cannot identify language {code!r}; use ISO 639-1 codes such as en, fr, zh")
        isos.append(iso)
    if len(isos) < 2:
        raise DataError(f"language identification needs at least two languages to tell apart, got {codes}")
    return LanguageDetectorBuilder.from_iso_codes_639_1(*isos).build()


class LanguageId:
    """Identifies the language of a text among ``langs`` (ISO 639-1 codes, e.g. the benchmark's ``--langs``)."""

    def __init__(self, langs: Sequence[str]) -> None:
        self.langs = tuple(dict.fromkeys(str(x).lower() for x in langs))
        self.detector = _detector(tuple(sorted(self.langs)))

    def detect(self, text: str) -> str | None:
        """Return the ISO 639-1 code lingua gives ``text`` among ``langs``; None for empty or letter-less text."""
        if not text or not any(ch.isalpha() for ch in text):
            return None
        found = self.detector.detect_language_of(text)
        return None if found is None else found.iso_code_639_1.name.lower()

    def forced(self, text: str, target: str, in_target_set: bool) -> bool:
        """Return True when ``text`` counts as written in ``target``.

        ``in_target_set``: the first generated token lies in the concept's target-language token set; it
        decides alone for the single tokens and same-script cognates lingua cannot judge. Otherwise lingua's
        answer must be ``target``.
        """
        return bool(in_target_set) or self.detect(text) == target
