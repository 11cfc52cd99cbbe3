"""References of the bulk tables (ledger entries, income) checked per statement, not per row.

A funding or delivery posting writes ~1M entries and ~1M income lines in one statement
each; PostgreSQL checks a foreign key with one query per row (~10 µs, three keys per
table: ~1 min for such a posting). The foreign-key constraints of those two tables are
dropped (and the single-column indexes that only served them) and the statement
triggers check the new rows set-based instead:
- ledger entries: every touched transaction exists and sums to zero per asset (its
  earlier entries already did: entries are append-only and every statement is
  checked, so the new rows alone are summed), and every (account, asset) has a
  balance row, whose own foreign keys guarantee the account and the asset;
- income: its transaction, asset and user exist.
Referenced rows cannot go away behind the entries: a ledger transaction with entries or
income lines and a balance row with entries refuse DELETE (an account or asset keeps
its balance rows through their foreign keys; a user keeps its accounts the same way),
and the ORM's PROTECT still refuses first.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

FORWARD = """
CREATE OR REPLACE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT g.transaction_id, g.asset_id, g.total, x.id IS NULL AS unknown INTO bad
    FROM (SELECT n.transaction_id, n.asset_id, SUM(n.amount) AS total
          FROM new_entries n GROUP BY n.transaction_id, n.asset_id) g
    LEFT JOIN ledger_ledgertransaction x ON x.id = g.transaction_id
    WHERE g.total <> 0 OR x.id IS NULL
    LIMIT 1;
    IF FOUND AND bad.unknown THEN
        RAISE EXCEPTION 'ledger entries reference unknown transaction %', bad.transaction_id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance for asset %: legs sum to %',
            bad.transaction_id, bad.asset_id, bad.total
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT n.account_id, n.asset_id INTO bad
    FROM new_entries n
    WHERE NOT EXISTS (SELECT 1 FROM ledger_balance b WHERE b.account_id = n.account_id AND b.asset_id = n.asset_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger entry of account % asset % has no balance row (unknown account or asset)',
            bad.account_id, bad.asset_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION ledger_income_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT g.transaction_id, g.asset_id INTO bad
    FROM (SELECT DISTINCT n.transaction_id, n.asset_id FROM new_rows n) g
    WHERE NOT EXISTS (SELECT 1 FROM ledger_ledgertransaction x WHERE x.id = g.transaction_id)
       OR NOT EXISTS (SELECT 1 FROM ledger_asset a WHERE a.id = g.asset_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'income references unknown transaction % or asset %', bad.transaction_id, bad.asset_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT n.user_id INTO bad
    FROM new_rows n WHERE NOT EXISTS (SELECT 1 FROM auth_user u WHERE u.id = n.user_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'income references unknown user %', bad.user_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_income_references_insert
AFTER INSERT ON ledger_income
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION ledger_income_references();

CREATE TRIGGER ledger_income_references_update
AFTER UPDATE ON ledger_income
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION ledger_income_references();

CREATE FUNCTION ledger_referenced_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'ledger_ledgertransaction' THEN
        IF EXISTS (SELECT 1 FROM ledger_ledgerentry e WHERE e.transaction_id = OLD.id)
           OR EXISTS (SELECT 1 FROM ledger_income i WHERE i.transaction_id = OLD.id) THEN
            RAISE EXCEPTION 'ledger transaction % has entries or income lines (DELETE refused)', OLD.id
                USING ERRCODE = 'restrict_violation';
        END IF;
    ELSIF EXISTS (SELECT 1 FROM ledger_ledgerentry e WHERE e.account_id = OLD.account_id AND e.asset_id = OLD.asset_id) THEN
        RAISE EXCEPTION 'balance of account % asset % has ledger entries (DELETE refused)', OLD.account_id, OLD.asset_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER ledger_transaction_keep BEFORE DELETE ON ledger_ledgertransaction
FOR EACH ROW EXECUTE FUNCTION ledger_referenced_keep();

CREATE TRIGGER ledger_balance_keep BEFORE DELETE ON ledger_balance
FOR EACH ROW EXECUTE FUNCTION ledger_referenced_keep();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS ledger_balance_keep ON ledger_balance;
DROP TRIGGER IF EXISTS ledger_transaction_keep ON ledger_ledgertransaction;
DROP FUNCTION IF EXISTS ledger_referenced_keep();
DROP TRIGGER IF EXISTS ledger_income_references_update ON ledger_income;
DROP TRIGGER IF EXISTS ledger_income_references_insert ON ledger_income;
DROP FUNCTION IF EXISTS ledger_income_references();
CREATE OR REPLACE FUNCTION ledger_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""


class Migration(migrations.Migration):

    dependencies = [
        ('ledger', '0003_income'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='income',
            name='asset',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='ledger.asset'),
        ),
        migrations.AlterField(
            model_name='income',
            name='transaction',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='ledger.ledgertransaction'),
        ),
        migrations.AlterField(
            model_name='income',
            name='user',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='incomes', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name='ledgerentry',
            name='account',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='entries', to='ledger.account'),
        ),
        migrations.AlterField(
            model_name='ledgerentry',
            name='asset',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='ledger.asset'),
        ),
        migrations.AlterField(
            model_name='ledgerentry',
            name='transaction',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='entries', to='ledger.ledgertransaction'),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
