"""What BI tools send to `tally serve`'s Postgres wire, through their own libraries.

Usage: bi_tools.py PORT DAY. Prints one labelled line per answer for the e2e test to check:
SQLAlchemy's inspector (what Superset's table browser calls), a Superset-style aggregate,
pandas.read_sql with exact decimals, and Grafana's data-source queries (texts beside this
file) with its macros expanded as its Go backend expands them.
"""
import json
import os
import re
import sys
from decimal import Decimal

import pandas
import psycopg
import sqlalchemy

port, day = int(sys.argv[1]), sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
engine = sqlalchemy.create_engine(f"postgresql+psycopg://analyst:@127.0.0.1:{port}/tally")

inspector = sqlalchemy.inspect(engine)
print("schemas", inspector.get_schema_names())
print("tables", sorted(inspector.get_table_names()))
print("views", sorted(inspector.get_view_names()))
print("relations", sorted(inspector.get_table_names() + inspector.get_view_names()))
for c in inspector.get_columns("ledger"):
    print("column", c["name"], repr(c["type"]), c["nullable"])
print("pk", inspector.get_pk_constraint("ledger")["constrained_columns"])
print("indexes", inspector.get_indexes("ledger"))
print("unique", inspector.get_unique_constraints("ledger"))
print("fks", inspector.get_foreign_keys("ledger"))

# Superset's chart query shape: GROUP BY … ORDER BY … LIMIT, through SQLAlchemy.
superset = sqlalchemy.text(
    "SELECT partner_id, sum(amount) AS total, count(*) AS n FROM ledger "
    "WHERE event_date = CAST(:day AS DATE) GROUP BY partner_id ORDER BY partner_id LIMIT 10000"
)
with engine.connect() as conn:
    for partner, total, n in conn.execute(superset, {"day": day}):
        assert isinstance(total, Decimal), type(total)
        print("superset", f"{partner}\t{total}\t{n}", sep="\t")

# Superset's default driver: `postgresql://` is SQLAlchemy on psycopg2.
superset_default = sqlalchemy.create_engine(f"postgresql://analyst:@127.0.0.1:{port}/tally")
reflected = sqlalchemy.inspect(superset_default).get_columns("ledger")
print("psycopg2 amount", [repr(c["type"]) for c in reflected if c["name"] == "amount"])
with superset_default.connect() as conn:
    for partner, total, n in conn.execute(superset, {"day": day}):
        assert isinstance(total, Decimal), type(total)
        print("psycopg2", f"{partner}\t{total}\t{n}", sep="\t")

frame = pandas.read_sql(superset, engine, params={"day": day}, coerce_float=False)
print("pandas types", sorted({type(v).__name__ for v in frame["total"]}))
for row in frame.itertuples(index=False):
    print("pandas", f"{row.partner_id}\t{row.total}\t{row.n}", sep="\t")

# Grafana: the table dropdown, the column list, the version probe and a time-series panel.
grafana = psycopg.connect(host="127.0.0.1", port=port, user="analyst", dbname="tally", autocommit=True)
for version, suffix in [("10", ""), ("11.4", "_11_4")]:
    with open(os.path.join(here, f"grafana_tables{suffix}.sql")) as f:
        print(f"grafana {version} tables", sorted(r[0] for r in grafana.execute(f.read())))
    with open(os.path.join(here, f"grafana_columns{suffix}.sql")) as f:
        columns = f.read().replace("${table}", "live_view")
    print(f"grafana {version} columns", sorted(tuple(r) for r in grafana.execute(columns)))
# `IN (subquery)` in a select list (Grafana 11.4+ uses it), with SQL's three-valued answers.
three_valued = grafana.execute(
    "SELECT x, x IN (SELECT * FROM (VALUES (1), (NULL)) t(v)) AS a, x NOT IN (SELECT 2) AS b, "
    "x IN (SELECT 1 WHERE false) AS c FROM (VALUES (1), (2), (NULL)) s(x) ORDER BY x"
).fetchall()
print("in subquery", three_valued)
version = grafana.execute("SELECT current_setting('server_version_num')::int/100 as version")
print("grafana version", version.fetchone()[0])
# The provisioned dashboard's panels (deploy/grafana), with the macros expanded as Grafana's
# Go backend expands them (pkg/tsdb/grafana-postgresql-datasource/macros.go).
def expand(sql, start, end):
    def macro(m):
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{start}' AND '{end}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            seconds = {"s": 1, "m": 60, "h": 3600}[args[1].strip("'")[-1]] * int(args[1].strip("'")[:-1])
            group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise ValueError(f"macro {name} is not used by the dashboard")
    return re.sub(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)", macro, sql)

with open(os.path.join(here, "../../../deploy/grafana/dashboards/live_view.json")) as f:
    dashboard = json.load(f)
for panel in dashboard["panels"]:
    sql = expand(panel["targets"][0]["rawSql"], f"{day}T00:00:00Z", "2026-11-04T00:00:00Z")
    rows = grafana.execute(sql).fetchall()
    print("grafana panel", panel["id"], "points", len(rows), "sum", sum(r[2] or 0 for r in rows))
    print("grafana panel", panel["id"], "minutes aligned", all(int(r[0]) % 60 == 0 for r in rows))
    print("grafana panel", panel["id"], "max", max(r[2] or 0 for r in rows))
print("live events", grafana.execute("SELECT sum(events) FROM live_view").fetchone()[0])
