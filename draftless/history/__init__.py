"""Memory across requests: a bounded, per-namespace, optionally persistent index of what earlier requests held.

``HistoryStore`` (store.py) keeps each namespace's past contexts in ``Segment``s (segment.py: growable suffix
automata, evicted whole, oldest first); persist.py writes and reads it on disk. The drafter that reads it is
``draftless.drafters.history.HistoryDrafter`` (spec kind ``history``).
"""
from .persist import HistoryError
from .segment import SEPARATOR, Segment
from .store import HistoryStore

__all__ = ["HistoryStore", "HistoryError", "Segment", "SEPARATOR"]
