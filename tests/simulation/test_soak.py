"""The soak: a small run passes with every invariant checked; a restart rebuilds equal
books; a corrupted ledger is caught at the next check with the event number and the
replay command; the command's arguments."""
import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from apps.ops.invariants import ALL_CHECKS
from apps.simulation import soak as soak_module
from apps.simulation.soak import Soak, SoakFailure, replay_command, soak_run
from apps.simulation.world import tasks_in_process

pytestmark = pytest.mark.slow


def test_small_soak_passes(transactional_db):
    out = io.StringIO()
    result = soak_run(seed=4, events=160, check_every=80, out=out)
    assert result.ok, result.failure
    assert (result.events, result.rounds, result.checks_passed) == (160, 2, 2 * len(ALL_CHECKS))
    assert sum(result.counts.values()) == 160
    assert result.counts["limit"] > 0 and result.counts["match"] > 0 and result.counts["tick"] > 0
    assert "2 invariant rounds passed" in out.getvalue()


def test_restart_rebuilds_the_same_books(transactional_db):
    with tasks_in_process():
        soak = Soak(seed=9)
        for _ in range(40):
            soak.event()
        soak.do_match()
        engines = soak.exchange.matcher.engines
        resting = sum(engine.book.order_count for engine in engines.values())
        assert resting > 0
        soak.do_restart()  # raises if a rebuilt book hashes differently
        assert soak.exchange.restarts == 1
        assert sum(engine.book.order_count for engine in soak.exchange.matcher.engines.values()) == resting
        assert soak.check() == []


def test_a_book_lost_in_a_restart_is_a_failure(transactional_db, monkeypatch):
    with tasks_in_process():
        soak = Soak(seed=9)
        restart = soak.exchange.restart

        def restart_losing_the_perpetual():
            restart()
            soak.exchange.matcher.engines.pop("BTCUSDT")

        monkeypatch.setattr(soak.exchange, "restart", restart_losing_the_perpetual)
        with pytest.raises(SoakFailure, match=r"books not rebuilt after the restart .*\['BTCUSDT'\]"):
            soak.do_restart()


def test_a_broken_invariant_stops_the_soak_with_a_replay_command(transactional_db, monkeypatch):
    original = Soak.event
    calls = {"n": 0}

    def event_then_corrupt(self):
        kind = original(self)
        calls["n"] += 1
        if calls["n"] == 20:  # a balance moved without a ledger entry
            with connection.cursor() as cursor:
                cursor.execute("UPDATE ledger_balance SET amount = amount + 1 WHERE id = "
                               "(SELECT b.id FROM ledger_balance b JOIN ledger_account a ON a.id = b.account_id "
                               "WHERE a.kind = 'INSURANCE_FUND')")
        return kind

    monkeypatch.setattr(soak_module.Soak, "event", event_then_corrupt)
    result = soak_run(seed=6, events=60, check_every=40, out=io.StringIO())
    assert not result.ok
    assert result.events == 40 and result.rounds == 0
    assert result.failure.startswith("event 40:")
    assert "balances_match_entries: account" in result.failure
    assert replay_command(seed=6, events=40) in result.failure
    assert "python manage.py simulate --soak --seed 6 --events 40" in result.failure


def test_soak_command_in_place(transactional_db):
    out = io.StringIO()
    call_command("simulate", "--soak", "--seed", "2", "--events", "20", "--check-every", "10", "--in-place",
                 stdout=out)
    assert "20 events" in out.getvalue() and "in 2 rounds" in out.getvalue()


@pytest.mark.parametrize("args, message", [
    ([], "choose one of --scenario NAME or --soak"),
    (["--soak", "--scenario", "crash"], "choose one of --scenario NAME or --soak"),
    (["--soak", "--seed", "-1"], "--seed must be non-negative"),
])
def test_command_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate", *args)
