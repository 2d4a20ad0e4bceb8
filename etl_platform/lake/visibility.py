"""Which lake objects downstream readers may see: those of committed flushes only.

A shard's flush records the names of the objects it is about to write in the shard's lease
(`pending_objects`) before writing any, and clears them with the commit. Between a crash and the
next attempt on that shard (which removes those names it does not overwrite) the lake may hold
objects of a flush that was never committed: an attempt that read more records than its retry will
leaves objects that no retry rewrites. Readers that build on the lake (replay, warehouse loads,
search reindexing, checks) skip them.

The pending names are asked for *after* listing: an object listed before that moment was written
after its name became pending, so it is then either still pending (skipped) or committed (kept).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

PendingObjects = Callable[[], Collection[str]]  # the names of objects of flushes not yet committed


def committed(keys: Iterable[str], pending: PendingObjects | None) -> list[str]:
    """`keys` (as listed a moment ago) without those of uncommitted flushes; all of them if `pending`
    is None (a lake without a lease table: tests, tools reading a copy)."""
    keys = list(keys)
    if pending is None or not keys:
        return keys
    hidden = set(pending())
    return [key for key in keys if key not in hidden]
