"""Redis doorbell that wakes the matcher of a contract after a command commits.

Only a wake-up: the matcher also polls the journal, so a lost ring delays a command
by at most one poll interval and loses nothing.
"""
import logging

from exchange.redis import channel, get_redis

logger = logging.getLogger(__name__)
CHANNEL = channel("matcher:doorbell")


def ring(contract_id: int) -> None:
    try:
        get_redis().publish(CHANNEL, str(contract_id))
    except Exception:  # the journal row is committed; the poll picks it up
        logger.warning("matcher doorbell for contract %s not delivered", contract_id, exc_info=True)
