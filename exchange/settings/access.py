"""Client API access: API-key secret encryption, signed-request windows, rate limits.

Star-imported at the end of `base.py`. Defaults are the reference exchange's public
figures (design 4a): 2,400 request weight per minute per IP (and per API key), 1,200
orders per minute per account, 429 and then escalating 418 bans.
"""
from django.core.exceptions import ImproperlyConfigured

from .env import env_bool, env_int, env_str

# Fernet key(s) that encrypt API-key secrets at rest: urlsafe base64 of 32 bytes
# (`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`).
# Several keys separated by commas rotate: the first encrypts, all decrypt. Empty in
# development means "derive one from SECRET_KEY"; production refuses to start without it
# (here for EXCHANGE_PRODUCTION=1, and in AccountsConfig.ready() for settings.production).
API_KEY_ENCRYPTION_KEY = env_str("API_KEY_ENCRYPTION_KEY", "")
if env_bool("EXCHANGE_PRODUCTION", False) and not API_KEY_ENCRYPTION_KEY:
    raise ImproperlyConfigured("Production mode without API_KEY_ENCRYPTION_KEY: set it to a Fernet key.")

# How long a process keeps a looked-up API key (and its decrypted secret) in memory;
# a revocation or permission change reaches every process within this many seconds.
API_KEY_CACHE_SECONDS = env_int("API_KEY_CACHE_SECONDS", 5)
# last_used_at is written at most this often per key and process (never per request).
API_KEY_LAST_USED_RESOLUTION_SECONDS = env_int("API_KEY_LAST_USED_RESOLUTION_SECONDS", 60)

# Signed requests: recvWindow default and maximum, tolerated client clock lead (ms).
API_RECV_WINDOW_DEFAULT_MS = env_int("API_RECV_WINDOW_DEFAULT_MS", 5000)
API_RECV_WINDOW_MAX_MS = env_int("API_RECV_WINDOW_MAX_MS", 60000)
API_TIMESTAMP_FUTURE_TOLERANCE_MS = env_int("API_TIMESTAMP_FUTURE_TOLERANCE_MS", 1000)

# Rate limits, fixed one-minute windows in Redis.
API_IP_WEIGHT_LIMIT_1M = env_int("API_IP_WEIGHT_LIMIT_1M", 2400)
API_KEY_WEIGHT_LIMIT_1M = env_int("API_KEY_WEIGHT_LIMIT_1M", 2400)
API_ACCOUNT_ORDER_LIMIT_1M = env_int("API_ACCOUNT_ORDER_LIMIT_1M", 1200)
# 429s tolerated in one window before a client that keeps sending is banned (418).
API_BAN_AFTER_REFUSALS = env_int("API_BAN_AFTER_REFUSALS", 10)
# Ban length: base, doubling on each ban while the offence level is remembered, capped.
API_BAN_BASE_SECONDS = env_int("API_BAN_BASE_SECONDS", 120)
API_BAN_MAX_SECONDS = env_int("API_BAN_MAX_SECONDS", 3 * 24 * 3600)
API_BAN_MEMORY_SECONDS = env_int("API_BAN_MEMORY_SECONDS", 7 * 24 * 3600)

# Where the client address comes from: REMOTE_ADDR, or a META key set by the trusted
# reverse proxy in front of the web process (e.g. "HTTP_X_REAL_IP"). Never trust a
# client-supplied header without such a proxy.
API_CLIENT_IP_META = env_str("API_CLIENT_IP_META", "REMOTE_ADDR")
# Prefix of every Redis key this app writes (limits, replay markers, listen keys).
API_REDIS_PREFIX = env_str("API_REDIS_PREFIX", "acc:")

# User data stream listen keys: validity after creation or keepalive.
LISTEN_KEY_TTL_SECONDS = env_int("LISTEN_KEY_TTL_SECONDS", 3600)
