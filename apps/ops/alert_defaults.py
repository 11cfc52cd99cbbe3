"""The default alert rules: the seed's thresholds (系统监控与运维) and the rules the
other capabilities need. Plain data, used by migration 0002 and `seed_demo`; rows are
created once by name and are the admin's to edit afterwards."""

DEFAULT_RULES = [
    dict(name="Order rate high", key="trading.orders_per_second", comparison="gt", threshold="10000",
         level="WARNING", for_seconds=0, cooldown_seconds=3600,
         description="Seed: orders_per_second > 10,000 → WARNING."),
    dict(name="Order latency p95 high", key="trading.order_latency_p95_us", comparison="gt", threshold="1000",
         level="CRITICAL", for_seconds=0, cooldown_seconds=900,
         description="Seed: order latency > 1 ms (1000 µs) → CRITICAL. Reads the p95 a matcher publishes."),
    dict(name="Latency SLA violated", key="ops.latency_sla_ratio", comparison="gt", threshold="1",
         level="HIGH", for_seconds=60, cooldown_seconds=3600,
         description="Seed LatencyMonitor SLAs, p95 over the last minute per operation: order processing 1 ms, "
         "market data 100 µs, risk check 500 µs, position update 200 µs. Reads p95 / SLA (worst process); "
         "held for a minute so one slow burst does not page."),
    dict(name="Insurance fund low", key="risk.insurance_fund_balance", comparison="lt", threshold="1000000",
         level="HIGH", for_seconds=0, cooldown_seconds=3600,
         description="Seed: insurance fund balance < 1,000,000 → HIGH."),
    dict(name="CPU high", key="system.cpu_percent", comparison="gt", threshold="80", level="WARNING",
         for_seconds=60, cooldown_seconds=3600,
         description="Seed: CPU > 80% → WARNING; held for a minute so a single busy sample does not page."),
    dict(name="Matcher heartbeat lost", key="ops.matcher_heartbeat_age", comparison="gt", threshold="30",
         level="CRITICAL", for_seconds=0, cooldown_seconds=900,
         description="Per symbol. 30 s is the seed's failover timeout of the perpetual engine; a standby "
         "normally takes the lease within a second."),
    dict(name="Beat heartbeat lost", key="ops.beat_heartbeat_age", comparison="gt", threshold="60",
         level="HIGH", for_seconds=0, cooldown_seconds=3600,
         description="No scheduled job (funding, invariants, backups) runs without beat and a worker."),
    dict(name="Price feed heartbeat lost", key="ops.pricefeed_heartbeat_age", comparison="gt", threshold="10",
         level="CRITICAL", for_seconds=0, cooldown_seconds=900,
         description="10 s is the seed's failover timeout of the mark price service."),
    dict(name="Ledger invariant broken", key="ledger.invariant_violations", comparison="gt", threshold="0",
         level="CRITICAL", for_seconds=0, cooldown_seconds=3600,
         description="From the scheduled invariant check (every 5 minutes)."),
    dict(name="Autovacuum off", key="db.autovacuum_off", comparison="gt", threshold="0", level="WARNING",
         for_seconds=0, cooldown_seconds=86400,
         description="The database server runs without autovacuum: dead rows of orders and journal commands pile "
         "up and order entry and the matcher slow down with each (apps.ops.maintenance). Turn it on (README)."),
    dict(name="Hot table dead rows high", key="db.hot_table_dead_rows", comparison="gt", threshold="100000",
         level="WARNING", for_seconds=600, cooldown_seconds=3600,
         description="Per table. Autovacuum runs on these tables at 10,000 dead rows (migration ops 0005): "
         "100,000 for 10 minutes means it cannot keep up or is held back by a long transaction "
         "(the alert's details name the oldest)."),
    dict(name="Job failed", key="job_failure", comparison="event", threshold=None, level="CRITICAL",
         for_seconds=0, cooldown_seconds=3600,
         description="Raised by funding, delivery and other jobs: alert_raise(key='job_failure:<job>:<symbol>')."),
    dict(name="Backup failed", key="backup_failure", comparison="event", threshold=None, level="HIGH",
         for_seconds=0, cooldown_seconds=3600,
         description="Raised when a backup or its verification fails."),
]


def rules_seed(rule_model) -> int:
    """Create the missing default rules on `rule_model` (historical or current); returns how many."""
    from decimal import Decimal

    created = 0
    for spec in DEFAULT_RULES:
        fields = dict(spec)
        threshold = fields.pop("threshold")
        fields["threshold"] = None if threshold is None else Decimal(threshold)
        _, was_created = rule_model.objects.get_or_create(name=fields.pop("name"), defaults=fields)
        created += was_created
    return created
