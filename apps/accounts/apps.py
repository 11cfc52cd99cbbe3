from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "Client access (API keys, listen keys, rate limits)"

    def ready(self):
        # settings.production sets EXCHANGE_PRODUCTION after base was read, so the
        # import-time check in settings.access cannot see it: refuse here as well.
        if settings.EXCHANGE_PRODUCTION and not settings.API_KEY_ENCRYPTION_KEY:
            raise ImproperlyConfigured("Production mode without API_KEY_ENCRYPTION_KEY: set it to a Fernet key.")
