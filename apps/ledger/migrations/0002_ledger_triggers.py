"""Database guards of the double-entry ledger.

- After each INSERT statement on ledger entries, every transaction it touched must sum
  to zero per asset (a statement-level trigger over the transition table: the entries
  of one transaction are written by one statement, so the check sees them together,
  and it costs one grouped query per statement rather than one per row).
- Ledger entries are append-only: UPDATE and DELETE are refused.
"""
from django.db import migrations

FORWARD = """
CREATE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT e.transaction_id, e.asset_id, SUM(e.amount) AS total INTO bad
    FROM ledger_ledgerentry e
    WHERE e.transaction_id IN (SELECT DISTINCT transaction_id FROM new_entries)
    GROUP BY e.transaction_id, e.asset_id
    HAVING SUM(e.amount) <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance for asset %: legs sum to %',
            bad.transaction_id, bad.asset_id, bad.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_balanced
AFTER INSERT ON ledger_ledgerentry
REFERENCING NEW TABLE AS new_entries
FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_balanced();

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only (% refused)', TG_OP USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER ledger_entries_append_only
BEFORE UPDATE OR DELETE ON ledger_ledgerentry
FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_ledgerentry;
DROP FUNCTION IF EXISTS ledger_entries_append_only();
DROP TRIGGER IF EXISTS ledger_entries_balanced ON ledger_ledgerentry;
DROP FUNCTION IF EXISTS ledger_entries_balanced();
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
