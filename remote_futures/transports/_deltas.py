"""Polling for transports that keep their jobs' task states in memory (local, pools, mock).

Such a transport learns of every change as it happens, so a poll reports exactly what changed
since the previous one and costs what changed, not the job's size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ..jobs import JobHandle, JobStatus, TaskStatus

__all__ = ["TaskBook", "take_changes"]


class TaskBook(Protocol):
    """One job's bookkeeping as such a transport keeps it."""

    #: Every task's latest state.
    states: dict[int, TaskStatus]
    #: Tasks whose state changed since the last poll.
    dirty: set[int]
    #: Calls whose outcomes arrived since the last poll.
    ready: list[int]


def take_changes(
    jobs: Sequence[JobHandle], books: Mapping[JobHandle, TaskBook]
) -> dict[JobHandle, JobStatus]:
    """What changed in each of ``jobs`` since the previous call, forgetting it once reported.
    Jobs without a book (released) are left out."""
    statuses = {}
    for handle in jobs:
        book = books.get(handle)
        if book is not None:
            statuses[handle] = JobStatus(
                {index: book.states[index] for index in book.dirty}, frozenset(book.ready)
            )
            book.dirty, book.ready = set(), []
    return statuses
