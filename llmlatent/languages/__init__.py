"""Languages as data, their word lists, and judging which language a token or a generation is in.

- ``registry``: :class:`~llmlatent.languages.registry.Language` (code, label, answer label, script, words
  file) for every bundled or user-supplied language.
- ``words``: reading word files and prompt files.
- ``scripts``: the Unicode script of a token, the language tags of decoded tokens, and the one output-language
  judge (``OutputJudge``: a language's script from its ISO 15924 code; script and language verdicts).
- ``identify``: language identification of short generations (lingua, the concept's token sets first).

This package's public face is the list below (the function that lists every language is
:func:`llmlatent.languages.registry.registry`, named like its module, so it is not gathered here).
"""

from llmlatent.languages.identify import LanguageId
from llmlatent.languages.registry import PAPER, Language, check_lang, codes, get, label, parse_codes
from llmlatent.languages.scripts import lang_tags, script, word_sets
from llmlatent.languages.words import MASK, read_table, read_words

__all__ = [
    "MASK",
    "PAPER",
    "Language",
    "LanguageId",
    "check_lang",
    "codes",
    "get",
    "label",
    "lang_tags",
    "parse_codes",
    "read_table",
    "read_words",
    "script",
    "word_sets",
]
