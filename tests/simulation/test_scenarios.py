"""The crash scenario at small size, run once for the module on the test database: the
report's files, valid PNGs, the summary against the database, what the crash did, and a
second run of the same seed giving the same summary."""
import json
from decimal import Decimal

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import pytest  # noqa: E402
from django.core.management import call_command  # noqa: E402
from PIL import Image  # noqa: E402

from apps.contracts.models import Contract, ContractStatus  # noqa: E402
from apps.ledger.models import AccountKind, Income, IncomeType  # noqa: E402
from apps.ledger.selectors import balance_amount  # noqa: E402
from apps.ledger.services import system_account  # noqa: E402
from apps.liquidation.models import Liquidation  # noqa: E402
from apps.marketdata.models import PriceSample  # noqa: E402
from apps.ops.invariants import ALL_CHECKS, run_all_invariants  # noqa: E402
from apps.positions.models import Position  # noqa: E402
from apps.settlement.models import DeliverySettlement, FundingSettlement  # noqa: E402
from apps.simulation.report import PLOTS  # noqa: E402
from apps.simulation.scenarios import SIZES, scenario_run  # noqa: E402
from apps.trading.models import Trade  # noqa: E402

# All transactional (the scenario commits through the matcher's durable batches), so pytest-django keeps
# them together and the module fixture runs once.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SEED = 11
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _facts() -> dict:
    """The run's figures read straight from the tables (not through the summary code)."""
    usdt = "USDT"
    samples = PriceSample.objects.filter(contract__symbol="BTCUSDT").order_by("at")
    size = SIZES["small"]
    outage_start = size.start.timestamp() + (size.event_minute + 3) * 60
    outage = [s for s in samples if outage_start + 30 <= s.at.timestamp() < outage_start + 5 * 60]
    return {
        "trades": Trade.objects.count(),
        "volume": sum((t.quantity for t in Trade.objects.all()), Decimal(0)),
        "funding_runs": FundingSettlement.objects.filter(status="DONE").count(),
        # What the payers' income lines say they paid.
        "funding_paid": -sum((i.amount for i in Income.objects.filter(income_type=IncomeType.FUNDING_FEE,
                                                                      amount__lt=0)), Decimal(0)),
        "liquidations": Liquidation.objects.count(),
        "insurance_fund": balance_amount(account=system_account(AccountKind.INSURANCE_FUND), asset_code=usdt),
        "bad_debt": balance_amount(account=system_account(AccountKind.BAD_DEBT), asset_code=usdt),
        "open_interest": sum((p.size for p in Position.objects.filter(contract__symbol="BTCUSDT", size__gt=0)),
                             Decimal(0)),
        "first_mark": samples.first().mark_price,
        "last_mark": samples.last().mark_price,
        "outage_venues": min(s.valid_venues for s in outage),
        "delivery": {d.contract.symbol: (d.status, d.positions)
                     for d in DeliverySettlement.objects.select_related("contract")},
        "delivered_status": Contract.objects.get(symbol="BTCUSDT_260302").status,
        "violations": [str(v) for v in run_all_invariants()],
    }


@pytest.fixture(scope="module")
def crash(django_db_setup, django_db_blocker, tmp_path_factory):
    """Run the scenario once, read the facts, then empty the database for the other tests."""
    out = tmp_path_factory.mktemp("simulation") / "crash"
    with django_db_blocker.unblock():
        try:
            summary = scenario_run(name="crash", seed=SEED, size="small", out=out)
            facts = _facts()
        finally:
            call_command("flush", verbosity=0, interactive=False)
    return out, summary, facts


def test_report_files_and_valid_pngs(crash):
    out, _, _ = crash
    page = (out / "index.html").read_text()
    assert json.loads((out / "summary.json").read_text())["scenario"] == "crash"
    for name, _title in PLOTS:
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 200
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and pixels.std() > 0  # something was drawn
        assert f'src="{name}"' in page


def test_summary_agrees_with_the_database(crash):
    out, summary, facts = crash
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["trades"] == facts["trades"] > 0
    assert Decimal(summary["volume"]) == facts["volume"]
    assert summary["funding"]["settlements"] == facts["funding_runs"] == 1
    assert Decimal(summary["funding"]["paid"]) == facts["funding_paid"] > 0
    assert summary["liquidations"]["count"] == facts["liquidations"]
    assert Decimal(summary["insurance_fund_balance"]) == facts["insurance_fund"]
    assert Decimal(summary["bad_debt_balance"]) == facts["bad_debt"]
    assert Decimal(summary["open_interest"]["BTCUSDT"]["long"]) == facts["open_interest"]
    assert Decimal(summary["open_interest"]["BTCUSDT"]["short"]) == facts["open_interest"]
    assert {d["symbol"]: (d["status"], d["positions"]) for d in summary["deliveries"]} == facts["delivery"]
    assert summary["invariants"] == {"checks": len(ALL_CHECKS), "passed": len(ALL_CHECKS), "violations": {}}
    assert facts["violations"] == []


def test_the_crash_happened_as_scripted(crash):
    _, summary, facts = crash
    assert facts["last_mark"] < facts["first_mark"] * Decimal("0.75")  # −30% on the venues, noise on top
    assert facts["outage_venues"] <= 2  # binance out: the index ran on the other venues
    assert facts["liquidations"] > 0  # leveraged longs did not survive it
    assert facts["delivery"] == {"BTCUSDT_260302": ("DONE", 2)}  # the two holders were cash-settled
    assert facts["delivered_status"] == ContractStatus.SETTLED
    assert summary["liquidations"]["fills"] > 0


def test_same_seed_same_summary(crash):
    _, first, _ = crash
    assert scenario_run(name="crash", seed=SEED, size="small") == first
