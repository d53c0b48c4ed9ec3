"""Languages as data, their word lists, and judging which language a token or a generation is in.

- ``registry``: :class:`~llmlatent.languages.registry.Language` (code, label, answer label, script, words
  file) for every bundled or user-supplied language.
- ``words``: reading word files and prompt files.
- ``scripts``: the Unicode script of a token, the language tags of decoded tokens, and the one output-language
  judge (``OutputJudge``: a language's script from its ISO 15924 code; script and language verdicts).
- ``identify``: language identification of short generations (lingua, the concept's token sets first).
"""
