"""The product's exceptions: one root, :class:`McelError`, and a class per way things go wrong.

The ``mcel`` command turns only these into exit statuses (:mod:`mcel_search.search.cli`):

* :class:`BadInputError` -> exit 2: the user gave a value, file or URI that cannot work; the message names
  the field, the value and what is allowed. It is also a ``ValueError``, so Python callers that catch
  ``ValueError`` keep working.
* :class:`ResumableError` -> exit 3: the environment stopped a search (a full disk, a tracking server down
  too long); nothing was lost, and ``--resume`` continues once the cause is fixed.
* :class:`NoResultError` -> exit 4: a search ran to its end but a study has no completed trial, so there is
  nothing to select (every trial errored or was pruned); the line says why.

Any other exception that reaches the command is a bug in the product: exit 1, one line saying so, and the
traceback with ``--debug``. This module is in ``core`` (imports point down) so every layer raises from the
same root.
"""

from __future__ import annotations


class McelError(Exception):
    """Root of every exception the product raises on purpose."""


class BadInputError(McelError, ValueError):
    """A value, file or URI given by the user cannot work (exit 2)."""


class ResumableError(McelError):
    """The environment stopped a search in a resumable state (exit 3): fix the cause, rerun with --resume."""


class NoResultError(McelError):
    """A search ended with a study that has no completed trial (exit 4): nothing to report or select."""
