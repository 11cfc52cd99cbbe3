"""Booking a large settlement's stored chunks, each in its own transaction, several at a time.

A funding or delivery settlement of many positions fixes every position's amounts in one
planning transaction and stores them as chunks (rows with a `number` and a `booked_at`);
this books the chunks not booked yet, each taken `SELECT ... FOR UPDATE [SKIP LOCKED]` and
booked by `book(chunk)` inside that transaction.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.db import OperationalError, connection, transaction
from django.db.models import Model, QuerySet
from psycopg.errors import DeadlockDetected

logger = logging.getLogger(__name__)
# The chunks booked at once take turns at writing their income lines (`with INCOME_TURN:`). Two
# statements appending to the same large table at the same moment contend (for its last heap
# and primary-key pages, and the WAL) and each runs ~70% longer (bench/delivery.py, 2 workers:
# 7.3 s of income statements for 21 chunks against 4.2 s booked one at a time). Taking turns, the
# other chunk runs its other statements meanwhile and the workers stay out of step.
INCOME_TURN = threading.Lock()
# A chunk stuck in a deadlock (PostgreSQL cancels one side) is tried again this many times per call.
CHUNK_DEADLOCK_RETRIES = 5


def chunks_book(*, chunks: QuerySet, fields: tuple[str, ...], book: Callable[[Model], None], workers: int,
                name: str) -> int:
    """Book every chunk of `chunks` (one run's) not booked yet, reading only `fields`; returns
    how many this call booked.

    `workers` threads (each with its own connection) take free chunks in parallel; chunks
    another runner holds are skipped, then waited for once the free ones are done, and
    booked here if that runner died. Inside a transaction (tests) one at a time.
    """
    def book_one(skip_locked: bool) -> bool:
        chunk = (chunks.select_for_update(skip_locked=skip_locked).filter(booked_at__isnull=True)
                 .order_by("number").only(*fields).first())
        if chunk is None:
            return False
        book(chunk)
        return True

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
