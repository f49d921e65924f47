"""The state layer's exceptions, in a module that imports nothing heavy (no sqlalchemy/sqlmodel),
so the read-only status path (`state/reader.py`) and the CLI can name them cheaply.

Library module (no command). ``state.db.StateError`` and ``state.store.LeaseLost`` are these
same classes, re-exported.
"""
from __future__ import annotations


class StateError(RuntimeError):
    """The state database cannot be opened or used; the message says what to do."""


class LeaseLost(RuntimeError):
    """This process no longer owns the run's lease; it must stop writing at once."""
