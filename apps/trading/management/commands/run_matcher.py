"""`manage.py run_matcher --symbols BTCUSDT,ETHUSDT`: the matcher worker for a symbol group."""
from django.core.management.base import BaseCommand
from prometheus_client import start_http_server

from apps.trading.matcher import Matcher, pin_cpu


class Command(BaseCommand):
    help = "Run the matching worker for a group of symbols (standby if another holds the lease)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--symbols", default="", help="Comma-separated symbols (e.g. BTCUSDT,ETHUSDT); empty: every listed contract"
        )
        parser.add_argument("--batch-size", type=int, default=2000)
        parser.add_argument("--poll", type=float, default=0.2, help="Seconds between journal polls when idle")
        parser.add_argument("--metrics-port", type=int, default=0, help="Serve Prometheus metrics on this port")

    def handle(self, *args, symbols, batch_size, poll, metrics_port, **options):
        if metrics_port:
            start_http_server(metrics_port, addr="127.0.0.1")
        pin_cpu()
        group = [s.strip() for s in symbols.split(",") if s.strip()] or None
        Matcher(group, batch_size=batch_size, poll_seconds=poll).run()
