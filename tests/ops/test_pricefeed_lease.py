"""One publishing pricefeed: two real `run_pricefeed` processes, the second stands by
(no tick, `exchange_leader 0`) until the first is killed with SIGKILL, then takes the
lease, restores from what the first stored and publishes; /readyz names the leader. A
standby and a leader both stop cleanly on SIGTERM, the leader clearing its pid."""
import sys

import pytest
from django.test import Client

from apps.marketdata.models import PriceSample
from apps.ops.leases import leader_pid

from .processes import free_ports, scrape, spawn, value, wait_for  # noqa: F401 (spawn: a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def pricefeed(spawn, name: str, port: int):
    return spawn(name, [sys.executable, "manage.py", "run_pricefeed", "--symbols", "BTCUSDT", "--interval", "0.2",
                        "--seed", "3", "--metrics-port", str(port)])


def readyz_pricefeed() -> dict:
    return Client().get("/readyz").json()["checks"]["pricefeed"]


def test_second_pricefeed_stands_by_and_takes_over_when_the_leader_is_killed(spawn, btcusdt):
    first_port, second_port = free_ports(), free_ports()
    first = pricefeed(spawn, "pricefeed1", first_port)
    wait_for(lambda: value(scrape(first_port), "pricefeed_published_total", symbol="BTCUSDT"), "the first to publish",
             first)
    assert value(scrape(first_port), "exchange_leader", service="pricefeed") == 1
    assert leader_pid("pricefeed") == first.pid and readyz_pricefeed()["leader_pid"] == first.pid

    second = pricefeed(spawn, "pricefeed2", second_port)
    standby = wait_for(lambda: (s := scrape(second_port)) and value(s, "exchange_leader", service="pricefeed") == 0
                       and s, "the standby", second)
    assert value(standby, "pricefeed_ticks_total") == 0  # it prices nothing while the first leads
    samples_before = PriceSample.objects.filter(contract=btcusdt).count()
    wait_for(lambda: PriceSample.objects.filter(contract=btcusdt).count() > samples_before, "the leader's next sample",
             first)
    assert value(scrape(second_port), "pricefeed_ticks_total") == 0

    first.kill()  # SIGKILL: no goodbye; PostgreSQL ends its session and with it the lease
    first.wait()
    wait_for(lambda: value(scrape(second_port), "exchange_leader", service="pricefeed") == 1, "the takeover", second)
    wait_for(lambda: value(scrape(second_port), "pricefeed_published_total", symbol="BTCUSDT"),
             "the standby to publish", second)
    assert leader_pid("pricefeed") == second.pid and readyz_pricefeed()["leader_pid"] == second.pid

    # A standby stops cleanly on SIGTERM; the leader's clean stop gives the lease up and clears its pid.
    third_port = free_ports()
    third = pricefeed(spawn, "pricefeed3", third_port)
    wait_for(lambda: value(scrape(third_port), "exchange_leader", service="pricefeed") == 0, "the new standby", third)
    third.terminate()
    assert third.wait(timeout=60) == 0
    second.terminate()
    assert second.wait(timeout=60) == 0
    assert leader_pid("pricefeed") is None and readyz_pricefeed()["leader_pid"] is None
    for process in (second, third):
        assert "Traceback" not in process.log_path.read_text()


def test_a_release_between_two_watch_rounds_ends_the_watch_quietly(monkeypatch):
    """`release()` on the main thread (a clean stop) can run just as the watch thread's wait
    returns: the watch then finds no connection, and must end, not raise in its thread."""
    import os as os_module

    from apps.ops import leases

    lease = leases.Lease("pricefeed")
    killed = []
    monkeypatch.setattr(os_module, "kill", lambda *args: killed.append(args))

    class ReleasedAsTheWaitReturns:
        released = False

        def wait(self, timeout):
            if self.released:
                return True
            self.released, lease.conn = True, None  # what release() leaves
            return False

        def is_set(self):
            return self.released

    lease.stopping = ReleasedAsTheWaitReturns()
    lease._watch()
    assert killed == []
