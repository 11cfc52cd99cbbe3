"""Encryption at rest of API-key secrets (Fernet, from the `cryptography` package).

The server key comes from `settings.API_KEY_ENCRYPTION_KEY` (one Fernet key, or several
separated by commas to rotate: the first encrypts, every one decrypts). In development,
when it is empty, a key is derived from SECRET_KEY so a fresh checkout works; production
refuses to start without it (settings.access and AccountsConfig.ready()).
"""
import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _dev_key(secret_key: str) -> bytes:
    digest = hashlib.sha256(b"exchange.accounts.api-key-encryption:" + secret_key.encode()).digest()
    return base64.urlsafe_b64encode(digest)


@lru_cache(maxsize=4)
def _fernet(configured: str, secret_key: str, production: bool) -> MultiFernet:
    raw_keys = [k.strip() for k in configured.split(",") if k.strip()]
    if not raw_keys:
        if production:
            raise ImproperlyConfigured("API_KEY_ENCRYPTION_KEY is required in production mode.")
        raw_keys = [_dev_key(secret_key).decode()]
    try:
        return MultiFernet([Fernet(k.encode()) for k in raw_keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"API_KEY_ENCRYPTION_KEY is not a valid Fernet key: {exc}") from exc


def get_fernet() -> MultiFernet:
    return _fernet(settings.API_KEY_ENCRYPTION_KEY, settings.SECRET_KEY, settings.EXCHANGE_PRODUCTION)


def encrypt_secret(secret: str) -> str:
    return get_fernet().encrypt(secret.encode()).decode("ascii")


def decrypt_secret(token: str) -> str:
    try:
        return get_fernet().decrypt(token.encode("ascii")).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "An API-key secret does not decrypt with API_KEY_ENCRYPTION_KEY (key changed without rotation?)."
        ) from exc
