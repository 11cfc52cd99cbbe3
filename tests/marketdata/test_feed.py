"""The pricefeed's Django side, tick by tick: publish, anomalies, pause and lift, stale
index, restart from stored state, minute records, and the premiumIndex endpoint."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.marketdata.engine import PriceSource, VenueQuote
from apps.marketdata.engine.quotes import to_ms
from apps.marketdata.feed import PriceFeed
from apps.marketdata.models import (
    AnomalyKind,
    AnomalySeverity,
    IndexConstituent,
    PriceAnomaly,
    PriceMinute,
    PriceSample,
    PriceStatus,
)
from apps.marketdata.selectors import price_latest
from apps.marketdata.services import price_publish

D = Decimal
VENUES = ("binance", "okx", "bybit")


class StubSource(PriceSource):
    """Quotes set by the test: price and volume per venue, stamped at the asking time."""

    def __init__(self):
        self.price = D("90000")
        self.volume = D("400")
        self.down = False

    @property
    def symbols(self):
        return ("BTCUSDT",)

    @property
    def venues(self):
        return VENUES

    def quotes_at(self, now, *, symbols=None):
        if self.down:
            return []
        return [VenueQuote(v, "BTCUSDT", self.price, self.volume, None, None, now) for v in VENUES]


@pytest.fixture
def t0():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def feed(btcusdt, clean_redis, t0):
    feed = PriceFeed(source="simulated", symbols=["BTCUSDT"], seed=1)
    feed.setup(now_ms=to_ms(t0))
    feed.source = StubSource()
    return feed


def ticks(feed, t0, start: int, count: int):
    """Ticks 6 s apart (beyond the 5 s index cache), so each one computes a new index."""
    for k in range(start, start + count):
        feed.tick(now=t0 + timedelta(seconds=6 * k))


def test_default_constituents_and_a_simulated_start_in_the_configured_region(btcusdt, clean_redis, t0):
    feed = PriceFeed(source="simulated", symbols=["BTCUSDT"], seed=7)
    feed.setup(now_ms=to_ms(t0))
    assert sorted(IndexConstituent.objects.values_list("venue", "source_symbol", "weight")) == [
        ("binance", "BTCUSDT", D("4")), ("bybit", "BTCUSDT", D("3")), ("okx", "BTCUSDT", D("3")),
    ]
    for k in range(3):
        feed.tick(now=t0 + timedelta(seconds=k))
    sample = PriceSample.objects.latest("at")
    assert abs(sample.index_price - D("90000")) / D("90000") < D("0.01")  # BTC ~ 90,000
    assert sample.valid_venues >= 1 and sample.status == PriceStatus.FRESH
    assert sample.mark_price == sample.mark_price.quantize(D("0.1"))


def test_unknown_symbol_stops_the_feed(btcusdt):
    with pytest.raises(SystemExit, match="unknown symbol"):
        PriceFeed(symbols=["NOPEUSDT"]).setup()


def test_volume_spike_pauses_the_mark_until_ops_lift_it(feed, t0, btcusdt, admin_client, admin_user):
    ticks(feed, t0, 0, 11)
    assert price_latest(contract=btcusdt).mark_price == D("90000")
    source = feed.source
    source.volume = D("2500")  # 7,500 vs a mean of 1,200: 6.25x, HIGH
    ticks(feed, t0, 11, 1)
    anomaly = PriceAnomaly.objects.get(kind=AnomalyKind.VOLUME_SPIKE)
    assert anomaly.severity == AnomalySeverity.HIGH
    assert anomaly.paused_until == t0 + timedelta(seconds=66 + 300)
    assert anomaly.value == D("6.25") and anomaly.threshold == D("5")
    # Paused: the index follows the market, the mark stays.
    source.volume, source.price = D("400"), D("91000")
    ticks(feed, t0, 12, 1)
    sample = PriceSample.objects.latest("at")
    assert (sample.index_price, sample.mark_price, sample.status) == (D("91000"), D("90000"), PriceStatus.PAUSED)
    # Ops lift the pause in the admin; the running feed notices on its next tick.
    response = admin_client.post(
        reverse("admin:marketdata_priceanomaly_changelist"),
        {"action": "lift_pause", "_selected_action": [anomaly.pk]},
    )
    assert response.status_code == 302
    anomaly.refresh_from_db()
    assert anomaly.lifted_by == admin_user and anomaly.lifted_at is not None
    ticks(feed, t0, 13, 1)
    sample = PriceSample.objects.latest("at")
    assert (sample.mark_price, sample.status) == (D("91000"), PriceStatus.FRESH)


def test_lifts_are_looked_for_only_while_a_pause_is_in_force(feed, t0, btcusdt):
    def lift_reads(start):
        with CaptureQueriesContext(connection) as queries:
            ticks(feed, t0, start, 1)
        return sum('"lifted_at" >=' in q["sql"] for q in queries.captured_queries)

    ticks(feed, t0, 0, 11)
    assert lift_reads(11) == 0
    feed.source.volume = D("2500")  # HIGH: paused for 5 minutes
    assert lift_reads(12) == 0  # paused during this tick, after the look
    feed.source.volume = D("400")
    assert lift_reads(13) == 1
    assert lift_reads(13 + 50) == 0  # 5 minutes later the pause is over


def test_stale_index_holds_the_last_value_and_records_one_episode(feed, t0, btcusdt):
    ticks(feed, t0, 0, 2)
    feed.source.down = True
    ticks(feed, t0, 2, 3)
    samples = list(PriceSample.objects.order_by("at").values_list("index_price", "mark_price", "status", "valid_venues"))
    assert samples[-1] == (D("90000"), D("90000"), PriceStatus.HELD, 0)
    episode = PriceAnomaly.objects.get(kind=AnomalyKind.INDEX_STALE)
    assert episode.severity == AnomalySeverity.ALERT and episode.ended_at is None
    assert "no valid quote" in episode.message
    feed.source.down = False
    ticks(feed, t0, 5, 1)
    episode.refresh_from_db()
    assert episode.ended_at == t0 + timedelta(seconds=30)
    assert PriceAnomaly.objects.filter(kind=AnomalyKind.INDEX_STALE).count() == 1


def test_nothing_is_published_before_the_first_valid_index(btcusdt, clean_redis, t0):
    feed = PriceFeed(source="simulated", symbols=["BTCUSDT"], seed=1)
    feed.setup(now_ms=to_ms(t0))
    feed.source = StubSource()
    feed.source.down = True
    ticks(feed, t0, 0, 2)
    assert not PriceSample.objects.exists()
    assert price_latest(contract=btcusdt) is None


def test_restart_resumes_from_the_stored_price_and_pause(btcusdt, clean_redis, t0):
    price_publish(contract=btcusdt, index_price=D("91234.5"), mark_price=D("91240.1"), at=t0 - timedelta(seconds=30))
    PriceAnomaly.objects.create(
        contract=btcusdt, kind=AnomalyKind.PRICE_JUMP, severity=AnomalySeverity.HIGH, detected_at=t0,
        message="test", paused_until=t0 + timedelta(minutes=4),
    )
    feed = PriceFeed(source="simulated", symbols=["BTCUSDT"], seed=3)
    feed.setup(now_ms=to_ms(t0))
    # The simulation starts from the stored index, not from the default region.
    assert abs(D(str(feed.source.true_price("BTCUSDT", to_ms(t0) - 5000))) - D("91234.5")) < D("0.01")
    # Last index and mark restored: the deviation rule has its reference, the mark its fallback.
    assert feed.feeds["BTCUSDT"].pipeline.index.last_index("BTCUSDT") == D("91234.5")
    feed.tick(now=t0)
    sample = PriceSample.objects.latest("at")
    assert sample.status == PriceStatus.PAUSED and sample.mark_price == D("91240.1")


def test_minutes_are_recorded_for_settlement(feed, t0, btcusdt):
    ticks(feed, t0, 0, 12)  # 66 s: at least one whole minute boundary
    feed.shutdown()
    minutes = list(PriceMinute.objects.order_by("minute"))
    assert minutes and all(set(m.venues) == set(VENUES) for m in minutes)
    assert all(D(m.venues["binance"]["price"]) == D("90000") for m in minutes)
    assert sum(m.venues["okx"]["quotes"] for m in minutes) == 12


# -- GET /fapi/v1/premiumIndex -------------------------------------------------------------


def test_premium_index_one_symbol_and_list(client, btcusdt, ethusdt, clean_redis, t0):
    price_publish(contract=btcusdt, index_price=D("90000.12345678"), mark_price=D("90010.1"), at=t0)
    body = client.get("/fapi/v1/premiumIndex", {"symbol": "BTCUSDT"}).json()
    # No premium samples yet: the predicted rate is the interest component alone.
    assert body == {
        "symbol": "BTCUSDT", "markPrice": "90010.10000000", "indexPrice": "90000.12345678",
        "estimatedSettlePrice": "90000.12345678", "lastFundingRate": "0.00010000", "interestRate": "0.00010000",
        "nextFundingTime": body["nextFundingTime"], "time": to_ms(t0),
    }
    assert body["nextFundingTime"] % (8 * 3600 * 1000) == 0 and body["nextFundingTime"] > to_ms(timezone.now())
    listed = client.get("/fapi/v1/premiumIndex").json()
    assert [row["symbol"] for row in listed] == ["BTCUSDT", "ETHUSDT"]
    assert listed[1]["markPrice"] == "0.00000000" and listed[1]["time"] == 0


def test_premium_index_unknown_symbol(client, btcusdt):
    response = client.get("/fapi/v1/premiumIndex", {"symbol": "NOPEUSDT"})
    assert response.status_code == 400
    assert response.json() == {"code": -1121, "msg": "Invalid symbol."}


def test_a_contract_listed_later_is_priced_without_a_restart(btcusdt, clean_redis, t0):
    """The delivery roll lists contracts while the pricefeed runs: it picks them up within its reload check."""
    from apps.contracts.models import Contract, ContractStatus

    feed = PriceFeed(source="simulated", seed=3)
    feed.setup(now_ms=to_ms(t0))
    assert set(feed.feeds) == {"BTCUSDT"}
    feed.tick(now=t0)
    listed = Contract.objects.get(pk=btcusdt.pk)
    listed.pk, listed.symbol, listed.status = None, "BTCUSDT_270326", ContractStatus.TRADING
    listed.contract_type, listed.delivery_time = "DELIVERY", t0 + timedelta(days=120)
    listed.save()
    feed._last_reload -= 60  # the 10 s reload check is due
    feed.tick(now=t0 + timedelta(seconds=6))
    assert set(feed.feeds) == {"BTCUSDT", "BTCUSDT_270326"}
    feed.tick(now=t0 + timedelta(seconds=12))
    assert price_latest(contract=listed) is not None


def test_the_index_follows_a_real_move_beyond_the_deviation_limit(feed, t0, btcusdt):
    """Venues silent, then back together 11% away: one bad venue is dropped, but when all of
    them agree the market moved. The index must not hold at the old price for good."""
    ticks(feed, t0, 0, 1)
    feed.source.down = True
    ticks(feed, t0, 1, 10)
    feed.source.down = False
    feed.source.price = D("100000")
    ticks(feed, t0, 11, 1)
    assert price_latest(contract=btcusdt).index_price == D("100000")


def test_one_venue_far_from_the_others_is_still_dropped(feed, t0, btcusdt):
    ticks(feed, t0, 0, 1)

    class OneOff(StubSource):
        def quotes_at(self, now, *, symbols=None):
            prices = {"binance": D("90010"), "okx": D("89990"), "bybit": D("120000")}
            return [VenueQuote(v, "BTCUSDT", prices[v], self.volume, None, None, now) for v in VENUES]

    feed.source = OneOff()
    ticks(feed, t0, 1, 1)
    assert abs(price_latest(contract=btcusdt).index_price - D("90000")) < 10  # from the two near ones


def test_a_failing_live_venue_only_drops_its_quote(btcusdt, clean_redis, t0):
    from apps.marketdata.engine.sources import LiveVenues

    def fetch(venue, symbol):
        if venue == "okx":
            raise ConnectionError("okx timeout")
        return VenueQuote(venue, symbol, D("90000"), D("400"), None, None, to_ms(timezone.now()))

    feed = PriceFeed(source="simulated", symbols=["BTCUSDT"], seed=1)
    feed.setup(now_ms=to_ms(t0))
    feed.source = LiveVenues(list(VENUES), ["BTCUSDT"], fetcher=fetch)
    feed.tick(now=timezone.now())
    assert price_latest(contract=btcusdt).index_price == D("90000")


def test_a_last_trade_price_that_is_not_a_number_is_ignored(feed, t0, btcusdt):
    import json

    from apps.marketdata.feed import LAST_TRADE_KEY
    from exchange.redis import get_redis

    get_redis().set(LAST_TRADE_KEY.format(symbol="BTCUSDT"), json.dumps({"p": "NaN", "t": to_ms(timezone.now())}))
    ticks(feed, t0, 0, 1)
    assert price_latest(contract=btcusdt).index_price == D("90000")
