"""`manage.py run_demo_traders`: demo market makers, takers and trend followers trading
through the client API (signed REST + websockets) of a running exchange.

`make run` starts it as the Procfile's `traders` process (DEMO_TRADERS=0 leaves it
out). It provisions the participants' users, wallets and API keys in the database
once, then talks to the exchange only over HTTP and websockets at `--base-url`.
"""
import asyncio
import json
import logging
import os
import secrets
from decimal import Decimal
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from apps.simulation.traders.provision import faucet_refill, participant_specs, provision_participants
from apps.simulation.traders.runner import RunConfig, run_traders

logger = logging.getLogger("apps.simulation.traders")


async def _faucet(name: str, up_to: Decimal) -> Decimal | None:
    def refill():
        try:
            return faucet_refill(name=name, up_to=up_to)
        finally:
            connection.close()  # a pool thread: do not leave its connection idle

    return await asyncio.to_thread(refill)


class Command(BaseCommand):
    help = ("Run demo participants (market makers, takers, leveraged trend followers) that trade through the "
            "client API of a running exchange until SIGTERM/SIGINT or --duration.")

    def add_arguments(self, parser):
        default_url = f"http://127.0.0.1:{os.environ.get('WEB_PORT', '8000')}"
        parser.add_argument("--base-url", default=default_url, help=f"the exchange's web server (default {default_url})")
        parser.add_argument("--seed", type=int, default=None, help="seed of the participants' decisions (random if omitted)")
        parser.add_argument("--makers", type=int, default=2)
        parser.add_argument("--takers", type=int, default=2)
        parser.add_argument("--trend", type=int, default=2, help="leveraged trend followers")
        parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
        parser.add_argument("--symbols", default="", help="comma-separated symbols (default: every TRADING one)")
        parser.add_argument("--weight-per-minute", type=int, default=1200,
                            help="request weight all participants together may use per minute (the server "
                                 "allows 2400 per IP)")
        parser.add_argument("--summary", default=None,
                            help="write a JSON summary here at exit (with every acknowledged order id)")

    def handle(self, *args, base_url, seed, makers, takers, trend, duration, symbols, weight_per_minute, summary,
               **options):
        for name in ("httpx", "httpcore", "websockets"):
            logging.getLogger(name).setLevel(logging.WARNING)  # one line per request would drown the log
        if duration is not None and duration <= 0:
            raise CommandError("--duration must be positive")
        if weight_per_minute <= 0:
            raise CommandError("--weight-per-minute must be positive")
        try:
            specs = participant_specs(makers=makers, takers=takers, trend=trend)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not specs:
            raise CommandError("no participants: give --makers, --takers or --trend a positive count")
        seed = seed if seed is not None else secrets.randbelow(2**31)
        base_url = base_url.rstrip("/")
        credentials = provision_participants(specs=specs, base_url=base_url)
        connection.close()  # the event loop below does no ORM work on this thread
        config = RunConfig(
            base_url=base_url, seed=seed, duration=duration,
            symbols=tuple(s.strip().upper() for s in symbols.split(",") if s.strip()) or None,
            weight_per_minute=weight_per_minute, record_ids=summary is not None,
        )
        result = asyncio.run(run_traders(config=config, credentials=credentials, faucet=_faucet))
        if summary:
            path = Path(summary)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))
        self.stdout.write(
            f"demo traders done: {sum(p['orders_acked'] for p in result['participants'])} orders acknowledged, "
            f"{sum(p['fills_seen'] for p in result['participants'])} fills seen (seed {seed})")
