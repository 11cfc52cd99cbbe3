"""Admin and ops pages: staff-only, rendering for every model, the wallet adjustment action."""
from decimal import Decimal

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse

from apps.ledger.models import AccountKind, LedgerTransaction, TransactionKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import wallet_deposit
from apps.positions.models import Position

D = Decimal


@pytest.fixture
def staff_client(client, make_user):
    staff = make_user("opsuser", is_staff=True, is_superuser=True)
    client.force_login(staff)
    client.staff = staff
    return client


@pytest.fixture
def populated(alice, bob, usdt, btcusdt, wallet):
    wallet_deposit(user=alice, asset=usdt, amount=D("100"))
    Position.objects.create(user=alice, contract=btcusdt, size=D("1"), entry_price=D("50000"))
    Position.objects.create(user=bob, contract=btcusdt, size=D("-1"), entry_price=D("50000"))


def admin_urls():
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        yield model, model_admin, reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")


def test_every_admin_page_renders_for_staff(staff_client, populated):
    request = RequestFactory().get("/admin/")
    request.user = staff_client.staff
    for model, model_admin, url in admin_urls():
        response = staff_client.get(url)
        assert response.status_code == 200, url
        # A row the admin shows (a proxy's admin may filter: the delivery calendar lists delivery contracts only).
        obj = model_admin.get_queryset(request).first()
        if obj is not None:
            meta = model._meta
            change = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
            assert staff_client.get(change).status_code == 200, change
    assert staff_client.get(reverse("admin:index")).status_code == 200
    assert staff_client.get(reverse("ops:dashboard")).status_code == 200


def test_admin_and_dashboard_are_refused_to_non_staff(client, alice, populated):
    client.force_login(alice)
    for _, _, url in admin_urls():
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    response = client.get(reverse("ops:dashboard"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_anonymous_is_sent_to_login(client, populated):
    response = client.get(reverse("admin:ledger_account_changelist"))
    assert response.status_code == 302


def test_history_is_read_only_in_admin(staff_client, populated):
    txn = LedgerTransaction.objects.first()
    response = staff_client.post(reverse("admin:ledger_ledgertransaction_change", args=[txn.pk]), {"memo": "x"})
    assert response.status_code == 403
    assert staff_client.get(reverse("admin:ledger_ledgerentry_add")).status_code == 403
    assert staff_client.get(reverse("admin:trading_trade_add")).status_code == 403


def post_adjustment(client, account, **form):
    data = {"action": "adjust_wallet", "_selected_action": [account.pk], "apply": "1", **form}
    return client.post(reverse("admin:ledger_account_changelist"), data, follow=True)


def test_credit_action_books_a_balanced_transaction_with_author(staff_client, alice, usdt, wallet):
    account = wallet(alice)
    response = post_adjustment(
        staff_client, account, asset=usdt.pk, direction="credit", amount="250.5", memo="goodwill credit"
    )
    assert response.status_code == 200
    assert balance_amount(account=account, asset_code="USDT") == D("250.5")
    txn = LedgerTransaction.objects.get(kind=TransactionKind.ADJUSTMENT)
    assert txn.created_by == staff_client.staff and txn.memo == "goodwill credit"
    assert sum(txn.entries.values_list("amount", flat=True)) == 0
    assert {e.account.kind for e in txn.entries.select_related("account")} == {AccountKind.WALLET, AccountKind.EXTERNAL}


def test_debit_beyond_balance_books_nothing_and_says_why(staff_client, alice, usdt, wallet):
    wallet_deposit(user=alice, asset=usdt, amount=D("10"))
    account = wallet(alice)
    response = post_adjustment(staff_client, account, asset=usdt.pk, direction="debit", amount="11", memo="fix")
    assert "Nothing booked: Insufficient balance" in response.content.decode()
    assert balance_amount(account=account, asset_code="USDT") == D("10")
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.ADJUSTMENT).exists()


def test_adjustment_form_rejects_bad_input(staff_client, alice, usdt, wallet):
    account = wallet(alice)
    response = post_adjustment(staff_client, account, asset=usdt.pk, direction="credit", amount="-5", memo="")
    body = response.content.decode()
    assert "This field is required" in body and "Ensure this value is greater than or equal to 0" in body
    precise = post_adjustment(staff_client, account, asset=usdt.pk, direction="credit", amount="0.000000001", memo="x")
    assert "Nothing booked" in precise.content.decode() and "decimal places" in precise.content.decode()
    assert not LedgerTransaction.objects.exists()
