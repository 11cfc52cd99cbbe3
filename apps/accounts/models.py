"""Client access: API keys (public key, secret encrypted at rest, permissions, IP allow-list).

Listen keys for the user data stream live in Redis only (they are short-lived session
tokens, not records); see services.listen_key_*.
"""
from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models

API_KEY_LENGTH = 64


class ApiKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    label = models.CharField(max_length=100, blank=True)
    # The public half, sent by clients in X-MBX-APIKEY (unique implies an index).
    key = models.CharField(max_length=API_KEY_LENGTH, unique=True, editable=False)
    # Fernet token of the HMAC secret (see crypto.py); the plaintext is never stored.
    secret_encrypted = models.TextField(editable=False)
    can_trade = models.BooleanField(default=False, help_text="Reading is always allowed.")
    # IP addresses or CIDR networks; empty means any address.
    ip_allowlist = ArrayField(models.CharField(max_length=49), default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        indexes = [models.Index(fields=["user", "revoked_at"], name="accounts_apikey_user_rev")]

    def __str__(self) -> str:
        return f"{self.label or 'API key'} ({self.key[:8]}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def permissions(self) -> list[str]:
        return ["read", "trade"] if self.can_trade else ["read"]
