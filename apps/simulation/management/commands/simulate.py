"""`manage.py simulate`: a named scenario with a report, or the randomized invariant soak.

Both run on a database of their own, dropped and created fresh (`<configured database>_sim_<scenario>`
or `..._sim_soak`; `--database NAME` to choose, `--in-place` to use the configured database
as it is, e.g. an empty test database).
"""
import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.simulation.database import database_name_for, database_recreate_and_use
from apps.simulation.scenarios import SCENARIOS, SIZES, scenario_run
from apps.simulation.soak import soak_run


class Command(BaseCommand):
    help = "Run a market scenario (report in --out) or the invariant soak, on a dedicated database."

    def add_arguments(self, parser):
        parser.add_argument("--scenario", choices=sorted(SCENARIOS))
        parser.add_argument("--soak", action="store_true", help="randomized events, invariants checked as it goes")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--size", choices=sorted(SIZES), default="small")
        parser.add_argument("--out", help="report directory (default: var/simulation/<scenario>-<seed>)")
        parser.add_argument("--events", type=int, default=100_000, help="soak: number of events")
        parser.add_argument("--check-every", type=int, default=10_000, help="soak: events between invariant checks")
        parser.add_argument("--database", help="database to (re)create and use (default <configured database>_sim_<scenario>)")
        parser.add_argument("--in-place", action="store_true",
                            help="use the configured database as it is (it must be empty and migrated)")

    def handle(self, *args, **options):
        if bool(options["scenario"]) == bool(options["soak"]):
            raise CommandError("choose one of --scenario NAME or --soak")
        if options["seed"] < 0:
            raise CommandError("--seed must be non-negative")
        label = options["scenario"] or "soak"
        if not options["in_place"]:
            name = options["database"] or database_name_for(label)
            self.stdout.write(f"database {name}: recreating and migrating")
            database_recreate_and_use(name)
        if options["soak"]:
            if options["events"] <= 0 or options["check_every"] <= 0:
                raise CommandError("--events and --check-every must be positive")
            result = soak_run(seed=options["seed"], events=options["events"], check_every=options["check_every"],
                              out=self.stdout)
            if not result.ok:
                self.stderr.write(result.failure)
                sys.exit(1)
            return
        out = Path(options["out"] or f"var/simulation/{label}-{options['seed']}")
        summary = scenario_run(name=label, seed=options["seed"], size=options["size"], out=out)
        self.stdout.write(json.dumps({k: summary[k] for k in ("trades", "volume", "liquidations", "invariants",
                                                              "insurance_fund_balance")}, indent=1))
        self.stdout.write(f"report: {out / 'index.html'}")
        if summary["invariants"]["violations"]:
            raise CommandError("invariant violations at the end of the run (see the report)")
