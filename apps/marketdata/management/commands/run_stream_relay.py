"""`manage.py run_stream_relay`: turn prices, matcher events and margin calls into websocket stream updates."""
import asyncio
import logging
import signal

from django.core.management.base import BaseCommand

from apps.marketdata.relay import StreamRelay

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = ("Relay md:prices, events:<symbol> and user:margin_call to the websocket streams' Redis channels "
            "(ws:<db>:<group>), which every web process fans out to its websockets.")

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
        logger.info("stream relay stopped after %d stream updates", relay.forwarded)
