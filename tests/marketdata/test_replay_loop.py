"""`run_pricefeed --source replay --replay-loop`: the file plays again and again, and prices
keep being published across the wrap, with a last trade price feeding the mark's basis.

Each lap replays the file shifted forward in time. It used to rewind the source clock, and the
mark refused the first basis observation older than the last one: from the first wrap on,
every tick failed and nothing was published.
"""
import json
from datetime import timedelta

from django.utils import timezone

from apps.marketdata.engine.quotes import to_ms
from apps.marketdata.feed import LAST_TRADE_KEY, PriceFeed
from apps.marketdata.selectors import price_latest
from exchange.redis import get_redis


def test_a_looped_replay_keeps_publishing_across_the_wrap(btcusdt, clean_redis):
    t0 = timezone.now().replace(microsecond=0)
    feed = PriceFeed(source="replay", symbols=["BTCUSDT"], replay_loop=True, lease=False)
    feed.setup(now_ms=to_ms(t0))
    span = (feed.source.end - feed.source.start) // 1000 + 10
    published, previous = [], None
    for k in range(0, span * 3, 3):  # three laps, a tick every 3 s
        get_redis().set(LAST_TRADE_KEY.format(symbol="BTCUSDT"),
                        json.dumps({"p": "67000", "t": to_ms(timezone.now())}))
        assert feed.tick(now=t0 + timedelta(seconds=k)) is True
        snapshot = price_latest(contract=btcusdt)
        assert snapshot is not None and (previous is None or snapshot.at > previous.at), k
        published.append(snapshot)
        previous = snapshot
    assert len(published) == len(range(0, span * 3, 3))
    # The first lap's prices come back in the later laps: the same file, not a frozen value.
    first_lap = {p.index_price for p in published[: span // 3]}
    last_lap = {p.index_price for p in published[-(span // 3):]}
    assert len(first_lap) > 1 and first_lap & last_lap


def test_without_loop_the_replay_ends(btcusdt, clean_redis):
    t0 = timezone.now().replace(microsecond=0)
    feed = PriceFeed(source="replay", symbols=["BTCUSDT"], lease=False)
    feed.setup(now_ms=to_ms(t0))
    end = (feed.source.end - feed.source.start) // 1000 + 11
    assert feed.tick(now=t0) is True
    assert feed.tick(now=t0 + timedelta(seconds=end)) is False
