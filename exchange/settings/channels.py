"""Channels layer: Redis fan-out for websocket groups."""
from .env import env_str

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [env_str("REDIS_URL", "redis://127.0.0.1:63799/0")]},
    }
}
