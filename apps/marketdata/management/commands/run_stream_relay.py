"""`manage.py run_stream_relay`: forward prices and matcher events into the websocket groups."""
import asyncio
import logging
import signal

from django.core.management.base import BaseCommand

from apps.marketdata.relay import StreamRelay

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Relay md:prices and events:<symbol> from Redis to the Channels groups of the market streams."

    def handle(self, *args, **options):
        asyncio.run(self._main())

    async def _main(self):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        relay = StreamRelay()
        logger.info("stream relay started")
        await relay.run(stop)
        await relay.layer.close_pools() if hasattr(relay.layer, "close_pools") else None
        logger.info("stream relay stopped after %d group messages", relay.forwarded)
