"""Booking a large settlement's stored chunks, each in its own transaction, several at a time.

A funding or delivery settlement of many positions fixes every position's amounts in one
planning transaction and stores them as chunks; this books the chunks not booked yet.
`book_one(skip_locked)` takes one free chunk (`SELECT ... FOR UPDATE [SKIP LOCKED]`),
books it inside the transaction it is given, and returns False when none is left.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.db import OperationalError, connection, transaction
from psycopg.errors import DeadlockDetected

logger = logging.getLogger(__name__)
# A chunk stuck in a deadlock (PostgreSQL cancels one side) is tried again this many times per call.
CHUNK_DEADLOCK_RETRIES = 5


def chunks_book(*, book_one: Callable[[bool], bool], workers: int, name: str) -> int:
    """Book every chunk left; returns how many this call booked.

    `workers` threads (each with its own connection) take free chunks in parallel; chunks
    another runner holds are skipped, then waited for once the free ones are done, and
    booked here if that runner died. Inside a transaction (tests) one at a time.
    """
    if workers > 1 and not connection.in_atomic_block:
        with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
            jobs = [pool.submit(_in_own_connection, _take_all, book_one, True, name) for _ in range(workers)]
            booked = sum(job.result() for job in jobs)
    else:
        booked = _take_all(book_one, True, name)
    return booked + _take_all(book_one, False, name)


def _in_own_connection(function, *args):
    try:
        return function(*args)
    finally:
        connection.close()  # this thread's


def _take_all(book_one: Callable[[bool], bool], skip_locked: bool, name: str) -> int:
    booked = deadlocks = 0
    while True:
        try:
            with transaction.atomic(durable=True):
                if not book_one(skip_locked):
                    return booked
            booked += 1
        except OperationalError as exc:
            if not isinstance(exc.__cause__, DeadlockDetected) or deadlocks >= CHUNK_DEADLOCK_RETRIES:
                raise
            deadlocks += 1
            logger.warning("a %s chunk deadlocked; trying it again", name)
