"""Contract settings the database refuses: a funding interval must divide the day (funding
times are every interval from 00:00 UTC), in the admin with a clear message, and in SQL."""
import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse

from apps.contracts.models import FUNDING_INTERVALS, Contract

pytestmark = pytest.mark.django_db


def test_a_funding_interval_that_does_not_divide_the_day_is_refused(btcusdt):
    assert all(24 % hours == 0 for hours in FUNDING_INTERVALS)
    with pytest.raises(IntegrityError, match="contract_funding_interval_divides_day"), transaction.atomic():
        Contract.objects.filter(pk=btcusdt.pk).update(funding_interval_hours=5)
    Contract.objects.filter(pk=btcusdt.pk).update(funding_interval_hours=4)


def test_the_admin_offers_only_intervals_that_divide_the_day(btcusdt, admin_client):
    url = reverse("admin:contracts_contract_change", args=[btcusdt.pk])
    page = admin_client.get(url).content.decode()
    assert '<option value="5">' not in page and '<option value="8" selected>8 h</option>' in page
    form = {name: value for name, value in _form_fields(admin_client, url).items()}
    form["funding_interval_hours"] = "5"
    response = admin_client.post(url, form)
    assert response.status_code == 200 and "Select a valid choice. 5 is not one of the available choices." in \
        response.content.decode()
    btcusdt.refresh_from_db()
    assert btcusdt.funding_interval_hours == 8


def _form_fields(client, url) -> dict:
    """The change form's current values, as the browser would post them back."""
    form = client.get(url).context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form.initial.get(name, field.initial)
        if value is None or name in ("margin_tiers",):
            continue
        data[name] = value.pk if hasattr(value, "pk") else value
    return data
