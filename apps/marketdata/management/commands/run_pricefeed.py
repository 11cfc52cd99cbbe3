"""`manage.py run_pricefeed`: index and mark prices for every live contract, every tick.

Only one runs at a time (the `pricefeed` lease); another one started stands by, its
metrics exporter up (`exchange_leader{service="pricefeed"} 0`) and on a port of its own
if given one (a port already taken is logged, not fatal).
"""
from django.core.management.base import BaseCommand, CommandError

from apps.marketdata.engine import SourceUnavailable
from apps.marketdata.feed import PriceFeed
from apps.ops.metrics import metrics_serve


class Command(BaseCommand):
    help = "Run the pricefeed: venue quotes -> index -> anomaly rules -> mark, published every tick."

    def add_arguments(self, parser):
        parser.add_argument("--source", choices=("simulated", "replay", "live"), default="simulated")
        parser.add_argument(
            "--symbols", default="", help="Comma-separated contracts (e.g. BTCUSDT,ETHUSDT); empty: every live contract"
        )
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between ticks")
        parser.add_argument("--seed", type=int, default=None, help="Simulated source seed (random if omitted)")
        parser.add_argument("--replay-file", action="append", default=None,
                            help="CSV tick file for --source replay (repeatable; default: the bundled sample)")
        parser.add_argument("--replay-loop", action="store_true", help="Start the replay again when it ends")
        parser.add_argument("--max-ticks", type=int, default=None, help="Stop after this many ticks")
        parser.add_argument("--metrics-port", type=int, default=9102, help="Prometheus metrics port (0: off)")
        parser.add_argument("--no-lease", action="store_true",
                            help="Publish without the single-pricefeed lease (e.g. disjoint --symbols groups)")

    def handle(self, *args, source, symbols, interval, seed, replay_file, replay_loop, max_ticks, metrics_port,
               no_lease, **options):
        if interval <= 0:
            raise CommandError("--interval must be positive")
        metrics_serve(metrics_port, role="pricefeed", addr="127.0.0.1")
        group = [s.strip().upper() for s in symbols.split(",") if s.strip()] or None
        feed = PriceFeed(source=source, symbols=group, interval=interval, seed=seed, replay_paths=replay_file,
                         replay_loop=replay_loop, max_ticks=max_ticks, lease=not no_lease)
        try:
            feed.run()
        except SourceUnavailable as exc:
            raise CommandError(str(exc)) from None
