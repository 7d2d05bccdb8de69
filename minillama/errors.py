"""The exceptions minillama raises for bad input, each naming what is wrong.

A broken or hostile file, a bad config field or a bad argument is reported with
one of these (or a plain ``FileNotFoundError`` for a path that does not exist),
never with a raw traceback from deep inside NumPy or the standard library:

* :class:`ConfigError` (a ``ValueError``): a config field is missing, of the wrong
  type or out of range; the message names the file and the field.
* :class:`CheckpointError` (a ``ValueError``): a weights file or checkpoint folder is
  missing a part, corrupt, inconsistent or refused as unsafe; the message names the
  file and the tensor.
* :class:`TokenizerError` (a ``ValueError``): a tokenizer file is unreadable, or a
  tokenizer request cannot be met.
* :class:`CorpusError` (a ``ValueError``): a training text is missing, empty, not UTF-8,
  too large, or a folder without ``.txt`` files; the message names the file.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config field is missing, of the wrong type or out of range."""


class CheckpointError(ValueError):
    """A checkpoint file or folder is missing, corrupt, inconsistent or unsafe."""


class TokenizerError(ValueError):
    """A tokenizer file is missing or unreadable, or a request cannot be met."""


class CorpusError(ValueError):
    """A training corpus is empty, not UTF-8 text, too large, or a folder without ``.txt`` files."""
