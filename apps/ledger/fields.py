"""Column types for money: NUMERIC with the project's precision, never float."""
from django.conf import settings
from django.db import models


def MoneyField(**kwargs) -> models.DecimalField:  # noqa: N802  (reads like a field class)
    kwargs.setdefault("max_digits", settings.MONEY_MAX_DIGITS)
    kwargs.setdefault("decimal_places", settings.MONEY_DECIMAL_PLACES)
    return models.DecimalField(**kwargs)
