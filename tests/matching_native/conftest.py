"""Fixtures: every book-level test runs against the C book and the Python reference.

Each book made through `make_book` is validated (internal invariants) right after
construction and again after the test, and its state_hash() is checked against a
hash recomputed from its snapshot and positions.
"""
import pytest

from matching_native import Book
from matching_native.reference import ReferenceBook

from .util import snapshot_hash

IMPLS = {"c": Book, "reference": ReferenceBook}


def check_book(book):
    book.validate()
    snap = book.snapshot()
    assert book.state_hash() == snapshot_hash(snap, book.positions())
    assert len(snap) // 40 == len(book) == book.order_count


@pytest.fixture(params=sorted(IMPLS))
def book_cls(request):
    return IMPLS[request.param]


@pytest.fixture
def make_book(book_cls):
    books = []

    def make(min_tick=1, max_tick=1000, capacity=64):
        book = book_cls(min_tick, max_tick, capacity)
        check_book(book)
        books.append(book)
        return book

    yield make
    for book in books:
        check_book(book)


@pytest.fixture
def book(make_book):
    return make_book()
