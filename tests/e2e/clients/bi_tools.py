"""What BI tools send to `tally serve`'s Postgres wire, through their own libraries.

Usage: bi_tools.py PORT DAY. Prints one labelled line per answer for the e2e test to check:
SQLAlchemy's inspector (what Superset's table browser calls), a Superset-style aggregate,
pandas.read_sql with exact decimals, and Grafana's data-source queries (texts beside this
file) with its macros expanded as its Go backend expands them.
"""
import os
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

frame = pandas.read_sql(superset, engine, params={"day": day}, coerce_float=False)
print("pandas types", sorted({type(v).__name__ for v in frame["total"]}))
for row in frame.itertuples(index=False):
    print("pandas", f"{row.partner_id}\t{row.total}\t{row.n}", sep="\t")

# Grafana: the table dropdown, the column list, the version probe and a time-series panel.
grafana = psycopg.connect(host="127.0.0.1", port=port, user="analyst", dbname="tally", autocommit=True)
with open(os.path.join(here, "grafana_tables.sql")) as f:
    print("grafana tables", sorted(r[0] for r in grafana.execute(f.read())))
with open(os.path.join(here, "grafana_columns.sql")) as f:
    columns = f.read().replace("${table}", "live_view")
print("grafana columns", sorted(tuple(r) for r in grafana.execute(columns)))
version = grafana.execute("SELECT current_setting('server_version_num')::int/100 as version")
print("grafana version", version.fetchone()[0])
# $__timeGroupAlias(window_start,'5m') and $__timeFilter(window_start) over three days.
panel = (
    "SELECT floor(extract(epoch from window_start)/300)*300 AS \"time\", partner_id AS metric, "
    "sum(events) AS value, sum(errors)::float8 / sum(events) AS error_rate FROM live_view "
    f"WHERE window_start BETWEEN '{day}T00:00:00Z' AND '2026-11-04T00:00:00Z' "
    "GROUP BY 1, 2 ORDER BY 1"
)
rows = grafana.execute(panel).fetchall()
print("grafana points", len(rows), "events", sum(r[2] for r in rows))
print("grafana buckets aligned", all(int(r[0]) % 300 == 0 for r in rows))
print("live events", grafana.execute("SELECT sum(events) FROM live_view").fetchone()[0])
