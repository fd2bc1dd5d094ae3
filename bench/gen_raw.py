#!/usr/bin/env python3
"""bench/gen_raw: a raw payments lake written by DuckDB, not by `tally generate`, in shards.

One event day D of N transactions, in a data shape chosen by name, so that no single generator
(and no single file layout) decides the ledger's benchmarks. Each shard of transactions
[a, b) is one DuckDB statement that writes its own files into the hive folders
`raw/payments/ingest_date=YYYY-MM-DD/`, so a 100M-transaction day never has to fit in memory
(DuckDB runs under `memory_limit`).

Every transaction has one original copy landing 0-300 s after its event (so late evening
events land on D + 1), and, decided by a hash of its index:
- 3% a webhook retry 1-10 minutes later, same payload;
- 5% a partner replay a day later (ingest_date D + 1 or D + 2), same payload;
- the shape's conflicting share: a copy naming D - 1 or D + 1 (half landing before the
  original, so the neighbouring day owns it, half after);
- the shape's disputed share: a second copy 1-10 minutes later whose amount is one cent more.

Shapes (`SHAPES`): id format (`uuid` 36 characters, `num20` 20-digit strings, `short`
`T` + index), file layout (rows per file, rows per row group), compression, and the
conflicting and disputed shares.

The expected ledger of D (count and sum of the winning copies' amounts) is computed from
the generator's own rule, independently of tally, and written to `expected.json`.

Usage: bench/gen_raw.py --lake DIR --shape NAME --events N [--memory-limit 4GB]
"""

import argparse
import json
import shutil
from pathlib import Path

DAY = "2026-11-01"

# name: (id format, rows per file, rows per row group, compression, conflicting %, disputed %)
SHAPES = {
    "large-snappy": ("short", 4_000_000, 131_072, "snappy", 0, 0),
    "small-zstd": ("short", 50_000, 50_000, "zstd", 0, 0),
    "uuid": ("uuid", 1_000_000, 122_880, "snappy", 0, 0),
    "num20": ("num20", 1_000_000, 122_880, "snappy", 0, 0),
    "conflicts-1pct": ("short", 1_000_000, 122_880, "snappy", 1, 0),
    "disputed-30pct": ("short", 1_000_000, 122_880, "snappy", 0, 30),
}

ID_SQL = {
    "short": "'T' || i::VARCHAR",
    # a UUID-shaped string from the md5 of the index: 8-4-4-4-12 hex digits
    "uuid": "substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) || '-' || substr(h, 17, 4) || '-' || substr(h, 21, 12)",
    # i -> i * m mod 10^20 is a bijection (m is prime to 10): distinct 20-digit strings
    "num20": "lpad(((i::HUGEINT * 6364136223846793007::HUGEINT) % 100000000000000000000::HUGEINT)::VARCHAR, 20, '0')",
}

# Integer fields from independent hashes of the index (DuckDB's hash() is stable for a version).
TXN_SQL = """
WITH base AS (
  SELECT i,
         md5(i::VARCHAR) AS h,
         hash(i, 'p') AS hp, hash(i, 't') AS ht, hash(i, 'a') AS ha, hash(i, 'c') AS hc
  FROM range({a}, {b}) r(i)
), txn AS (
  SELECT i,
         {id_sql} AS txn_id,
         'p' || lpad(floor(pow((hp % 1000000) / 1000000.0, 3) * 300)::INT::VARCHAR, 3, '0') AS partner_id,
         TIMESTAMPTZ '{day} 00:00:00+00' + to_microseconds((ht % 86400000000)::BIGINT) AS event_time,
         (((ha % 1000000) + 1)::DECIMAL(18, 2) / 100)::DECIMAL(18, 2) AS amount,
         ['EUR', 'USD', 'GBP', 'JPY', 'BRL'][(hc % 5)::INT + 1] AS currency,
         CASE WHEN hc % 100 < 3 THEN 'declined' WHEN hc % 100 < 4 THEN 'error' ELSE 'ok' END AS status,
         to_microseconds(((hc // 7) % 300000000)::BIGINT) AS delay,
         (hash(i, 'k') % 10000)::BIGINT AS k
  FROM base
)
"""

SHARD_SQL = TXN_SQL + """, copies AS (
  SELECT txn_id, partner_id, event_time, event_time + delay AS ingest_time, amount, currency, status FROM txn
  UNION ALL  -- webhook retries
  SELECT txn_id, partner_id, event_time, event_time + delay + to_microseconds(60000000 + (k * 54000)::BIGINT),
         amount, currency, status FROM txn WHERE k < 300
  UNION ALL  -- partner replays a day or two later
  SELECT txn_id, partner_id, event_time, event_time + delay + INTERVAL 1 DAY + to_microseconds((k * 8640000)::BIGINT),
         amount, currency, status FROM txn WHERE k >= 300 AND k < 800
  UNION ALL  -- conflicting copies naming D - 1 or D + 1; half land before the original
  SELECT txn_id, partner_id,
         event_time + CASE WHEN k % 2 = 0 THEN INTERVAL 1 DAY ELSE -INTERVAL 1 DAY END,
         event_time + delay + CASE WHEN k % 4 < 2 THEN INTERVAL 30 SECOND ELSE -INTERVAL 30 SECOND END,
         amount, currency, status FROM txn WHERE k >= 800 AND k < 800 + {conflict_k}
  UNION ALL  -- disputed: a later copy one cent more
  SELECT txn_id, partner_id, event_time, event_time + delay + to_microseconds(60000000 + ((k % 10) * 54000000)::BIGINT),
         amount + 0.01, currency, status FROM txn WHERE k >= 2000 AND k < 2000 + {dispute_k}
)
SELECT txn_id, partner_id, event_time, ingest_time, amount::DECIMAL(18, 2) AS amount, currency, status,
       strftime(ingest_time AT TIME ZONE 'UTC', '%Y-%m-%d') AS ingest_date
FROM copies ORDER BY ingest_time
"""

# The winning copy per transaction, by the generator's rule (not tally's): the original unless a
# conflicting copy landed before it, in which case the transaction belongs to D - 1 or D + 1.
# Disputed copies land later, so the original (amount) wins. SPEC's arrival window decides
# which copies a day sees at all.
EXPECTED_SQL = TXN_SQL + """
SELECT count(*) AS n, sum(amount)::VARCHAR AS s
FROM txn
WHERE NOT (k >= 800 AND k < 800 + {conflict_k} AND k % 4 >= 2
           -- a copy naming D + 1 that landed on D - 1 is outside D + 1's arrival window
           -- (D .. D + horizon + 1): not a copy of that day, so D keeps the transaction
           AND NOT (k % 2 = 0 AND event_time + delay - INTERVAL 30 SECOND < TIMESTAMPTZ '{day} 00:00:00+00'))
"""


def generate(lake: Path, shape: str, events: int, shard_min: int = 1_000_000, memory_limit: str = "4GB"):
    """Writes the lake (replacing it) and returns the expected ledger {count, sum}."""
    import duckdb

    ids, per_file, row_group, codec, conflict_pct, dispute_pct = SHAPES[shape]
    raw = lake / "raw" / "payments"
    shutil.rmtree(lake, ignore_errors=True)
    raw.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = true")
    params = dict(day=DAY, id_sql=ID_SQL[ids], conflict_k=conflict_pct * 100, dispute_k=dispute_pct * 100)
    n, total = 0, 0
    from decimal import Decimal

    total = Decimal(0)
    # one statement per file-sized shard; small files come from one row group per file
    shard = per_file if per_file >= shard_min else shard_min
    layout = "" if per_file >= shard_min else ", ROW_GROUPS_PER_FILE 1"
    for s, a in enumerate(range(0, events, shard)):
        b = min(a + shard, events)
        sql = SHARD_SQL.format(a=a, b=b, **params)
        con.execute(
            f"COPY ({sql}) TO '{raw}' (FORMAT parquet, PARTITION_BY (ingest_date), COMPRESSION {codec}, "
            f"ROW_GROUP_SIZE {row_group}{layout}, FILENAME_PATTERN 'shard{s:05d}_{{i}}', OVERWRITE_OR_IGNORE)"
        )
        cn, cs = con.execute(EXPECTED_SQL.format(a=a, b=b, **params)).fetchone()
        n += cn
        total += Decimal(cs)
        print(f"  shard {s}: transactions {a}..{b}", flush=True)
    expected = {"shape": shape, "events": events, "ledger_rows": n, "ledger_sum": str(total)}
    (lake / "expected.json").write_text(json.dumps(expected))
    return expected


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lake", type=Path, required=True)
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--memory-limit", default="4GB")
    args = p.parse_args()
    print(json.dumps(generate(args.lake, args.shape, args.events, memory_limit=args.memory_limit)))


if __name__ == "__main__":
    main()
