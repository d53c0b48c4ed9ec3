"""The one base class of llmlatent's domain errors: bad input, an unusable model, a stale or corrupt result.

The command line catches :class:`LlmlatentError` only and prints its message as one line; anything
else (a real bug, CUDA out of memory …) keeps its traceback. Subclasses also derive from
``ValueError`` so that ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations


class LlmlatentError(Exception):
    """A domain error whose message says what is wrong and how to fix it (printed as one line by the CLI)."""


class UsageError(LlmlatentError, ValueError):
    """A bad argument value (negative count, unknown option value …)."""


class OutputFolderError(LlmlatentError, ValueError):
    """An output folder that must not be written or replaced (unrelated files, ``.``, ``$HOME`` …)."""


class ModelLoadError(LlmlatentError, ValueError):
    """A model could not be loaded or used (blocks, final norm, KV cache not found or not run); the message says
    why and what to do."""


class SteeringError(LlmlatentError, ValueError):
    """Bad steering input (layer, size, non-finite values, mismatched models); the message says which."""


class DataError(LlmlatentError, ValueError):
    """Bad word data or an unknown language; the message says what is wrong."""
