//! `tally serve` through clients tally did not write: the ADBC Flight SQL driver (Python
//! `adbc-driver-flightsql`), psycopg (Postgres extended protocol) and psql. Expected ledger
//! figures come from the raw files (the oracle in `ledger.rs`), not from tally.

use crate::harness::*;
use crate::ledger::expected_ledger;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DAY: &str = "2026-11-01";
const NEXT_DAY: &str = "2026-11-02";

/// A running `tally serve` on free loopback ports; killed when dropped.
struct Server {
    proc: Proc,
    http: String,
    flight: String,
    pg: String,
}

impl Server {
    fn start(dir: &Path, token: Option<&str>, extra: &[&str]) -> Server {
        let mut cmd = tally_cmd(dir);
        cmd.args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--flight-sql",
            "127.0.0.1:0",
            "--pg",
            "127.0.0.1:0",
        ])
        .args(extra);
        if let Some(t) = token {
            cmd.env("TALLY_TOKEN", t);
        }
        let proc = Proc::spawn(&mut cmd, &["http", "flight-sql", "pg"]);
        Server {
            http: proc.addrs["http"].clone(),
            flight: proc.addrs["flight-sql"].clone(),
            pg: proc.addrs["pg"].clone(),
            proc,
        }
    }

    fn pg_port(&self) -> &str {
        self.pg.rsplit(':').next().unwrap()
    }

    /// SIGTERM; the exit code and everything the server printed (stdout, then stderr).
    fn terminate(self) -> (Option<i32>, String) {
        self.proc.terminate()
    }
}

/// A lake with two generated days and the first day's ledger built.
fn lake_with_ledger(dir: &Path) {
    generate(dir, 2, 3000, 21);
    tally_ok(dir, &["ledger", "--date", DAY]);
}

/// Per-partner sums of `day`'s ledger, in cents, computed from the raw files.
fn expected_sums(dir: &Path, day: &str) -> BTreeMap<String, (i128, u64)> {
    let raw = read_raw(&dir.join("lake"));
    let mut sums: BTreeMap<String, (i128, u64)> = BTreeMap::new();
    for row in expected_ledger(&raw, day, 3).values() {
        let e = sums.entry(row[1].clone()).or_default();
        e.0 += parse_cents(&row[3]);
        e.1 += 1;
    }
    sums
}

fn parse_cents(s: &str) -> i128 {
    let neg = s.starts_with('-');
    let (int, frac) = s.trim_start_matches('-').split_once('.').unwrap();
    let c = int.parse::<i128>().unwrap() * 100 + frac.parse::<i128>().unwrap();
    if neg {
        -c
    } else {
        c
    }
}

fn sums_from_lines(out: &str) -> BTreeMap<String, (i128, u64)> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), (parse_cents(f[1]), f[2].parse().unwrap()))
        })
        .collect()
}

fn per_partner_sql(day: &str) -> String {
    format!(
        "SELECT partner_id, sum(amount) AS total, count(*) AS n FROM ledger \
         WHERE event_date = DATE '{day}' GROUP BY partner_id ORDER BY partner_id"
    )
}

/// Runs `body` with an ADBC Flight SQL connection `conn` in Python; returns stdout.
fn adbc(server: &Server, auth: &str, body: &str) -> String {
    let script = format!(
        "import adbc_driver_flightsql.dbapi as f, adbc_driver_flightsql as fs, sys, json\n\
         kw = {auth}\n\
         conn = f.connect('grpc://{}', **kw)\n\
         {body}\n",
        server.flight
    );
    String::from_utf8(python(&script)).unwrap()
}

/// Runs `body` with a psycopg connection `conn`; returns stdout.
fn psycopg(server: &Server, password: Option<&str>, body: &str) -> String {
    let script = format!(
        "import psycopg, sys, json\n\
         conn = psycopg.connect(host='127.0.0.1', port={}, user='analyst', dbname='tally', password={:?}, autocommit=True)\n\
         {body}\n",
        server.pg_port(),
        password.unwrap_or("")
    );
    String::from_utf8(python(&script)).unwrap()
}

const NO_AUTH: &str = "{}";

fn print_rows_py(sql: &str) -> String {
    format!(
        "cur = conn.cursor()\ncur.execute({sql:?})\nfor r in cur.fetchall():\n    print('\\t'.join(str(v) for v in r))"
    )
}

#[test]
fn ledger_sums_are_exact_through_flight_sql_and_the_postgres_wire() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let want = expected_sums(dir.path(), DAY);
    assert!(want.len() > 2, "the day has several partners");
    let server = Server::start(dir.path(), None, &[]);

    let got = sums_from_lines(&adbc(
        &server,
        NO_AUTH,
        &print_rows_py(&per_partner_sql(DAY)),
    ));
    assert_eq!(got, want, "Flight SQL");
    let got = sums_from_lines(&psycopg(
        &server,
        None,
        &print_rows_py(&per_partner_sql(DAY)),
    ));
    assert_eq!(got, want, "Postgres wire");

    // SPEC types on each wire: Decimal128(18,2), Timestamp(us, UTC), Date32, Int64, Utf8.
    let types = adbc(
        &server,
        NO_AUTH,
        "cur = conn.cursor()\ncur.execute('SELECT amount, event_time, event_date, copies, txn_id FROM ledger LIMIT 1')\nprint(cur.fetch_arrow_table().schema)",
    );
    for t in [
        "amount: decimal128(18, 2)",
        "event_time: timestamp[us, tz=UTC]",
        "event_date: date32",
        "copies: int64",
        "txn_id: string",
    ] {
        assert!(types.contains(t), "{t} missing in {types}");
    }
    let oids = psycopg(
        &server,
        None,
        "cur = conn.cursor()\ncur.execute('SELECT amount, event_time, event_date, copies, txn_id FROM ledger LIMIT 1')\nprint([d.type_code for d in cur.description])\nr = cur.fetchone()\nprint(type(r[0]).__name__, type(r[1]).__name__, r[1].tzinfo is not None)",
    );
    // numeric, timestamptz, date, int8, text.
    assert!(oids.contains("[1700, 1184, 1082, 20, 25]"), "{oids}");
    assert!(oids.contains("Decimal datetime True"), "{oids}");
}

/// What Postgres clients parse before they query: SQLAlchemy reads `version()`, libpq the
/// `server_version` parameter; psycopg (not in autocommit) wraps reads in a transaction and
/// nests savepoints. All work; a write inside a transaction is still refused.
#[test]
fn postgres_clients_parse_the_version_and_read_inside_transactions_and_savepoints() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let want = expected_sums(dir.path(), DAY);
    let server = Server::start(dir.path(), None, &[]);
    let script = format!(
        "import psycopg, sqlalchemy\n\
         conn = psycopg.connect(host='127.0.0.1', port={port}, user='analyst', dbname='tally', password='')\n\
         print('libpq', conn.info.server_version)\n\
         cur = conn.cursor()\n\
         cur.execute('SELECT version()')\n\
         print('version', cur.fetchone()[0])\n\
         print('status', conn.info.transaction_status.name)\n\
         for sql in ['SAVEPOINT s1', 'ROLLBACK TO SAVEPOINT s1', 'RELEASE SAVEPOINT s1', 'SET TRANSACTION READ ONLY']:\n\
         \x20   cur.execute(sql)\n\
         \x20   print('tag', cur.statusmessage)\n\
         with conn.transaction():\n\
         \x20   with conn.transaction():\n\
         \x20       cur.execute({sums:?})\n\
         \x20       rows = cur.fetchall()\n\
         conn.commit()\n\
         for r in rows:\n\
         \x20   print('\\t'.join(str(v) for v in r))\n\
         try:\n\
         \x20   cur.execute('CREATE TABLE leak AS SELECT 1')\n\
         except psycopg.Error as e:\n\
         \x20   print('refused', e.sqlstate)\n\
         conn.rollback()\n\
         conn.autocommit = True\n\
         try:\n\
         \x20   cur.execute('SAVEPOINT outside')\n\
         except psycopg.Error as e:\n\
         \x20   print('outside', e.sqlstate)\n\
         cur.execute('SHOW server_version')\n\
         print('show', cur.fetchone()[0])\n\
         engine = sqlalchemy.create_engine('postgresql+psycopg://analyst:@127.0.0.1:{port}/tally')\n\
         with engine.connect() as c:\n\
         \x20   print('sqlalchemy', c.dialect.server_version_info)\n\
         \x20   print('sqlalchemy rows', len(c.execute(sqlalchemy.text('SELECT txn_id FROM ledger LIMIT 5')).fetchall()))\n\
         inspector = sqlalchemy.inspect(engine)\n\
         print('schemas', inspector.get_schema_names())\n\
         print('tables', sorted(inspector.get_table_names()))\n\
         cur.execute(\"SELECT 'pg_x' LIKE 'pg!_%' ESCAPE '!', 'pgax' LIKE 'pg!_%' ESCAPE '!', 'a!b' LIKE 'a!!b' ESCAPE '!', 'a\\\\b' LIKE 'a\\\\b' ESCAPE '!'\")\n\
         print('like', cur.fetchone())\n",
        port = server.pg_port(),
        sums = per_partner_sql(DAY),
    );
    let out = String::from_utf8(python(&script)).unwrap();
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {out}"))
            .to_string()
    };
    assert_eq!(line("libpq "), "libpq 160006", "{out}");
    let version = line("version ");
    assert!(
        version.starts_with("version PostgreSQL 16.6 (tally ")
            && version.contains("on Apache DataFusion "),
        "{out}"
    );
    assert_eq!(line("status "), "status INTRANS", "{out}");
    let tags: Vec<&str> = out.lines().filter(|l| l.starts_with("tag ")).collect();
    assert_eq!(
        tags,
        vec!["tag SAVEPOINT", "tag ROLLBACK", "tag RELEASE", "tag SET"],
        "{out}"
    );
    let sums: String = out
        .lines()
        .filter(|l| l.contains('\t'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(sums_from_lines(&sums), want, "{out}");
    assert_eq!(line("refused "), "refused 25006", "{out}");
    assert_eq!(line("outside "), "outside 25P01", "{out}");
    assert!(line("show ").starts_with("show 16.6 (tally "), "{out}");
    assert_eq!(line("sqlalchemy ("), "sqlalchemy (16, 6)", "{out}");
    assert_eq!(line("sqlalchemy rows"), "sqlalchemy rows 5", "{out}");
    // SQLAlchemy's inspector lists schemas with `NOT LIKE 'pg!_%' ESCAPE '!'`.
    assert!(line("schemas ").contains("'public'"), "{out}");
    assert!(line("tables ").contains("'ledger'"), "{out}");
    assert_eq!(line("like "), "like (True, False, True, True)", "{out}");
}

/// The BI tools' own libraries against the Postgres wire: SQLAlchemy's inspector (Superset's
/// table browser), a Superset-style aggregate and `pandas.read_sql` with exact decimals, and
/// Grafana's table and column queries (its source's texts) and a macro-expanded time series.
#[test]
fn bi_tools_browse_the_catalog_and_read_exact_answers() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    tally_ok(dir.path(), &["live", "--once"]);
    let want = expected_sums(dir.path(), DAY);
    let server = Server::start(dir.path(), None, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/clients/bi_tools.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([server.pg_port().to_string().as_str(), DAY])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {stdout}"))
            .to_string()
    };
    assert_eq!(line("schemas "), "schemas ['public']");
    assert!(
        line("tables ").contains("'ledger', 'ledger_conflicts'"),
        "{stdout}"
    );
    // The live view is a view over its Delta table (one row per key).
    assert_eq!(line("views "), "views ['live_late', 'live_view']");
    let columns: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("column "))
        .collect();
    for want_column in [
        "column txn_id TEXT() False",
        "column event_time TIMESTAMP(timezone=True) True",
        "column event_date DATE() False",
        "column amount NUMERIC(precision=18, scale=2) True",
    ] {
        assert!(
            columns.contains(&want_column),
            "{want_column} in {columns:?}"
        );
    }
    assert_eq!(line("pk "), "pk []");
    assert_eq!(line("indexes "), "indexes []");
    assert_eq!(line("unique "), "unique []");
    assert_eq!(line("fks "), "fks []");
    let rows = |prefix: &str| -> String {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_eq!(sums_from_lines(&rows("superset\t")), want, "{stdout}");
    assert_eq!(sums_from_lines(&rows("pandas\t")), want, "{stdout}");
    assert_eq!(sums_from_lines(&rows("psycopg2\t")), want, "{stdout}");
    assert_eq!(
        line("psycopg2 amount"),
        "psycopg2 amount ['NUMERIC(precision=18, scale=2)']"
    );
    assert_eq!(line("pandas types"), "pandas types ['Decimal']");
    // The lake's tables and views as SQLAlchemy's inspector lists them, nothing from the
    // catalogs, by both Grafana generations' queries; and the live view's columns by type.
    for version in ["10", "11.4"] {
        let tables = line(&format!("grafana {version} tables "));
        assert_eq!(
            tables.trim_start_matches(&format!("grafana {version} tables ")),
            line("relations ").trim_start_matches("relations "),
            "{stdout}"
        );
        let columns = line(&format!("grafana {version} columns "));
        assert!(
            columns.contains("('window_start', 'timestamp with time zone')")
                && columns.contains("('events', 'bigint')")
                && columns.contains("('amount', 'numeric')"),
            "{columns}"
        );
    }
    assert_eq!(
        line("in subquery"),
        "in subquery [(1, True, True, False), (2, None, False, False), (None, None, None, False)]"
    );
    assert_eq!(line("grafana version"), "grafana version 1600");
    let live_events = line("live events ")
        .trim_start_matches("live events ")
        .to_string();
    assert!(live_events.parse::<u64>().unwrap() > 0, "{stdout}");
    // The provisioned dashboard: every live event is in a per-minute point; error rates are rates.
    assert!(
        line("grafana panel 1 points").ends_with(&format!("sum {live_events}")),
        "{stdout}"
    );
    assert_eq!(
        line("grafana panel 1 minutes"),
        "grafana panel 1 minutes aligned True"
    );
    assert_eq!(
        line("grafana panel 2 minutes"),
        "grafana panel 2 minutes aligned True"
    );
    let max_rate: f64 = line("grafana panel 2 max")
        .trim_start_matches("grafana panel 2 max ")
        .parse()
        .unwrap();
    assert!(max_rate > 0.0 && max_rate <= 1.0, "{stdout}");
}

#[test]
fn prepared_statements_bind_parameters_on_both_wires() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let raw = read_raw(&dir.path().join("lake"));
    let ledger = expected_ledger(&raw, DAY, 3);
    let (txn, row) = ledger.iter().nth(17).unwrap();
    let server = Server::start(dir.path(), None, &[]);

    let flight = adbc(
        &server,
        NO_AUTH,
        &format!(
            "cur = conn.cursor()\n\
             cur.execute('SELECT partner_id, amount FROM ledger WHERE txn_id = ?', parameters=({txn:?},))\n\
             print(cur.fetchall())\n\
             cur.execute('SELECT count(*) FROM ledger WHERE amount > ? AND event_date = ?', parameters=(0, '{DAY}'))\n\
             print(cur.fetchall())"
        ),
    );
    let amount = &row[3];
    assert!(
        flight.contains(&format!("[('{}', Decimal('{amount}'))]", row[1])),
        "{flight}"
    );
    let positive = ledger.values().filter(|r| parse_cents(&r[3]) > 0).count();
    assert!(flight.contains(&format!("[({positive},)]")), "{flight}");

    // psycopg binds $1 server-side; the sixth run of one statement uses a named prepared
    // statement (prepare_threshold = 5), which must still answer.
    let pg = psycopg(
        &server,
        None,
        &format!(
            "cur = conn.cursor()\n\
             for _ in range(7):\n\
             \x20   cur.execute('SELECT partner_id, amount FROM ledger WHERE txn_id = %s', ({txn:?},))\n\
             \x20   r = cur.fetchall()\n\
             print(r)"
        ),
    );
    assert!(
        pg.contains(&format!("[('{}', Decimal('{amount}'))]", row[1])),
        "{pg}"
    );

    // A numeric parameter is compared exactly: the amount matches, the amount plus half a
    // cent is refused (binding rounded it onto the amount before), never rounded.
    let exact = psycopg(
        &server,
        None,
        &format!(
            "from decimal import Decimal\n\
             cur = conn.cursor()\n\
             q = 'SELECT count(*) FROM ledger WHERE txn_id = %s AND amount = %s'\n\
             cur.execute(q, ({txn:?}, Decimal('{amount}'))); print(cur.fetchall()[0][0])\n\
             cur.execute(q, ({txn:?}, Decimal('{amount}000'))); print(cur.fetchall()[0][0])\n\
             for off in ['0.005', '-0.005', '0.0001']:\n\
             \x20   try:\n\
             \x20       cur.execute(q, ({txn:?}, Decimal('{amount}') + Decimal(off))); print('ran', cur.fetchall())\n\
             \x20   except psycopg.Error as e:\n\
             \x20       print('refused', e.sqlstate)"
        ),
    );
    assert_eq!(
        exact.lines().collect::<Vec<_>>(),
        ["1", "1", "refused 22003", "refused 22003", "refused 22003"],
        "{exact}"
    );
}

#[test]
fn metadata_calls_list_the_lake_tables() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let server = Server::start(dir.path(), None, &[]);

    let out = adbc(
        &server,
        NO_AUTH,
        "print(conn.adbc_get_table_types())\n\
         objs = conn.adbc_get_objects(depth='all').read_all().to_pylist()\n\
         for c in objs:\n\
         \x20   for s in c['catalog_db_schemas']:\n\
         \x20       for t in s['db_schema_tables']:\n\
         \x20           print('table', c['catalog_name'], s['db_schema_name'], t['table_name'], t['table_type'], ','.join(col['column_name'] for col in (t['table_columns'] or [])))\n\
         print('schema', conn.adbc_get_table_schema('ledger'))\n\
         info = conn.adbc_get_info()\n\
         print('vendor', info.get('vendor_name'))",
    );
    assert!(out.contains("'TABLE'"), "{out}");
    assert!(
        out.contains(
            "table datafusion public ledger TABLE txn_id,partner_id,event_time,event_date,amount"
        ),
        "{out}"
    );
    assert!(
        out.contains("table datafusion public raw_payments"),
        "{out}"
    );
    assert!(out.contains("amount: decimal128(18, 2)"), "{out}");
    assert!(out.contains("vendor tally"), "{out}");

    // psql's \dt and \d, as a person would type them.
    let psql = |cmd: &str| {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                server.pg_port(),
                "-U",
                "analyst",
                "-d",
                "tally",
                "-c",
                cmd,
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dt = psql("\\dt");
    assert!(dt.contains("ledger"), "{dt}");
    assert!(dt.contains("raw_payments"), "{dt}");
    let d = psql("\\d ledger");
    assert!(d.contains("amount"), "{d}");
    assert!(d.contains("numeric"), "{d}");
    assert!(d.contains("txn_id"), "{d}");
    // The information_schema a table browser reads.
    let cols = psycopg(
        &server,
        None,
        &print_rows_py(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'ledger' ORDER BY ordinal_position",
        ),
    );
    assert!(cols.starts_with("txn_id\npartner_id\n"), "{cols}");
}

#[test]
fn a_commit_by_another_process_is_visible_without_a_restart() {
    let dir = tempdir();
    generate(dir.path(), 2, 3000, 21);
    // The server starts before the ledger exists.
    let server = Server::start(dir.path(), None, &[]);
    let missing = psycopg(
        &server,
        None,
        "try:\n    conn.execute('SELECT count(*) FROM ledger').fetchall(); print('ran')\nexcept psycopg.Error as e:\n    print('error', e.sqlstate)",
    );
    assert_eq!(missing.trim(), "error 42P01");

    // Created by another process: found by the next query, through Parse (extended protocol).
    tally_ok(dir.path(), &["ledger", "--date", DAY]);
    let day_count: u64 = expected_sums(dir.path(), DAY).values().map(|v| v.1).sum();
    let got = psycopg(
        &server,
        None,
        &format!("print(conn.execute('SELECT count(*) FROM ledger WHERE event_date = %s', ['{DAY}']).fetchone()[0])"),
    );
    assert_eq!(got.trim(), day_count.to_string());

    // A statement prepared (named, server-side) before a commit sees the commit when run
    // again on the same connection; the commit is made by `tally ledger` in between.
    let count_sql = format!("SELECT count(*) FROM ledger WHERE event_date = DATE '{NEXT_DAY}'");
    let script = format!(
        "import subprocess, os\n\
         cur = conn.cursor()\n\
         for _ in range(6):\n\
         \x20   cur.execute({count_sql:?}, prepare=True)\n\
         \x20   before = cur.fetchone()[0]\n\
         env = {{k: v for k, v in os.environ.items() if not k.startswith(('TALLY_', 'AWS_', 'DATAFUSION_'))}}\n\
         subprocess.run([{bin:?}, 'ledger', '--date', '{NEXT_DAY}'], cwd={cwd:?}, env=env, check=True, capture_output=True)\n\
         cur.execute({count_sql:?}, prepare=True)\n\
         print(before, cur.fetchone()[0])",
        bin = tally_bin(),
        cwd = dir.path().to_str().unwrap(),
    );
    let want: u64 = expected_sums(dir.path(), NEXT_DAY)
        .values()
        .map(|v| v.1)
        .sum();
    assert!(want > 0);
    assert_eq!(psycopg(&server, None, &script).trim(), format!("0 {want}"));
    let py = print_rows_py(&count_sql);
    assert_eq!(
        adbc(&server, NO_AUTH, &py).trim(),
        want.to_string(),
        "Flight SQL"
    );

    // A raw file landing after the start is read too (file listings are not cached).
    let raw_sql = "SELECT count(*) FROM raw_payments WHERE txn_id = 'late-landed-1'";
    assert_eq!(adbc(&server, NO_AUTH, &print_rows_py(raw_sql)).trim(), "0");
    assert_eq!(psycopg(&server, None, &print_rows_py(raw_sql)).trim(), "0");
    let at = micros("2026-11-01T12:00:00Z");
    write_raw(
        &dir.path().join("lake"),
        DAY,
        "landed-after-start.parquet",
        &[ok_row("late-landed-1", "p-late", at, at + 1_000_000, 1234)],
    );
    assert_eq!(adbc(&server, NO_AUTH, &print_rows_py(raw_sql)).trim(), "1");
    assert_eq!(psycopg(&server, None, &print_rows_py(raw_sql)).trim(), "1");
}

/// Runs `sql` through ADBC and through psycopg (unprepared and prepared); panics if any of
/// them ran it. Returns the Flight SQL refusal and the two Postgres ones (`refused <sqlstate>
/// <message>`).
fn refused_by_adbc_and_psycopg(server: &Server, sql: &str) -> (String, Vec<String>) {
    let flight = adbc(
        server,
        NO_AUTH,
        &format!(
            "cur = conn.cursor()\n\
             try:\n\
             \x20   cur.execute({sql:?}); cur.fetchall(); print('ran')\n\
             except Exception as e:\n\
             \x20   print('refused', e)"
        ),
    );
    assert!(
        flight.starts_with("refused"),
        "Flight SQL ran {sql}: {flight}"
    );
    let pg = ["False", "True"].map(|prepare| {
        let pg = psycopg(
            server,
            None,
            &format!(
                "cur = conn.cursor()\n\
                 try:\n\
                 \x20   cur.execute({sql:?}, prepare={prepare}); print('ran')\n\
                 except psycopg.Error as e:\n\
                 \x20   print('refused', e.sqlstate, e)"
            ),
        );
        assert!(pg.starts_with("refused"), "psycopg ran {sql}: {pg}");
        pg
    });
    (flight, pg.to_vec())
}

#[test]
fn writes_are_refused_on_every_path_and_the_tables_stay_as_they_were() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let ledger_dir = dir.path().join("lake/ledger");
    let before = last_commit(&ledger_dir);
    let server = Server::start(dir.path(), None, &[]);
    let attempts = [
        "INSERT INTO ledger SELECT * FROM ledger",
        "DELETE FROM ledger",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp'",
        "COPY (SELECT 1) TO '/tmp/tally-serve-copy.parquet'",
        "DROP TABLE ledger",
        "SET datafusion.execution.batch_size = 1",
        "SELECT * INTO copy_of_ledger FROM ledger",
        "EXPLAIN ANALYZE INSERT INTO ledger SELECT * FROM ledger",
        "CREATE VIEW v AS SELECT 1",
        "PREPARE p AS SELECT 1",
    ];
    for sql in attempts {
        let (flight, pg) = refused_by_adbc_and_psycopg(&server, sql);
        assert!(flight.contains("read-only"), "{sql}: {flight}");
        for pg in pg {
            assert!(pg.starts_with("refused 25006"), "pg ran {sql}: {pg}");
        }
    }
    assert!(!Path::new("/tmp/tally-serve-copy.parquet").exists());
    assert_eq!(last_commit(&ledger_dir), before, "the ledger is unchanged");
    // The server still answers, with the settings it had and no new table.
    let settings = print_rows_py(
        "SELECT value FROM information_schema.df_settings WHERE name = 'datafusion.execution.batch_size'",
    );
    assert_eq!(psycopg(&server, None, &settings).trim(), "8192");
    assert_eq!(adbc(&server, NO_AUTH, &settings).trim(), "8192");
    let tables = print_rows_py(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('x', 'v', 'copy_of_ledger')",
    );
    assert_eq!(psycopg(&server, None, &tables).trim(), "0");
    let n = psycopg(&server, None, &print_rows_py("SELECT count(*) FROM ledger"));
    assert!(n.trim().parse::<u64>().unwrap() > 0);
}

/// Every file under `dir` with its size and modification time.
fn tree_state(dir: &Path) -> BTreeMap<std::path::PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (meta.len(), meta.modified().unwrap()));
            }
        }
    }
    out
}

/// Runs `sql` with psql's simple protocol (one Query message, several statements allowed);
/// returns (exit success, stdout + stderr).
fn psql_simple(server: &Server, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", server.pg_port()])
        .args(["-U", "analyst", "-d", "tally", "-X", "-A", "-t"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The spellings of a write a hostile client would try (a review found the first one ran on
/// the simple protocol): on psql, psycopg (extended protocol, prepared or not) and ADBC, each
/// is refused, no file appears at the target, and no file of the lake changes.
#[test]
fn hostile_spellings_of_a_write_are_refused_on_every_wire() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let lake = dir.path().join("lake");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let server = Server::start(dir.path(), None, &[]);
    let before = tree_state(&lake);
    let targets = [
        outside.join("explain.csv"),
        lake.join("raw/explain.parquet"),
        lake.join("ledger/_delta_log/00000000000000000099.json"),
    ];
    let mut attempts = Vec::new();
    for t in &targets {
        let t = t.display();
        attempts.push(format!("EXPLAIN (ANALYZE) COPY (SELECT 1 AS a) TO '{t}'"));
        attempts.push(format!(
            "EXPLAIN (ANALYZE true) COPY (SELECT 1 AS a) TO '{t}'"
        ));
        attempts.push(format!("EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{t}'"));
        attempts.push(format!("EXPLAIN COPY (SELECT 1 AS a) TO '{t}'"));
        attempts.push(format!(
            "explain (analyze, verbose) copy (select 1 as a) to '{t}'"
        ));
    }
    attempts.push("EXPLAIN (ANALYZE) INSERT INTO ledger SELECT * FROM ledger".into());
    attempts.push(format!(
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '{}'",
        outside.display()
    ));
    attempts.push("CREATE VIEW v AS SELECT * FROM ledger".into());
    for sql in &attempts {
        let (ok, out) = psql_simple(&server, sql);
        assert!(!ok && out.contains("read-only"), "psql ran {sql}: {out}");
        refused_by_adbc_and_psycopg(&server, sql);
    }
    // A simple-protocol text with one write runs none of its statements, and a cursor over a
    // write is refused.
    for sql in [
        format!(
            "SELECT 1; COPY (SELECT 1 AS a) TO '{}'",
            targets[0].display()
        ),
        "BEGIN; SELECT count(*) FROM ledger; INSERT INTO ledger SELECT * FROM ledger; COMMIT"
            .to_string(),
        "BEGIN; DECLARE c CURSOR FOR SELECT * INTO copy_of_ledger FROM ledger; FETCH 1 FROM c"
            .to_string(),
    ] {
        let (ok, out) = psql_simple(&server, &sql);
        assert!(!ok && out.contains("read-only"), "psql ran {sql}: {out}");
        assert!(
            !out.lines().any(|l| l.trim() == "1"),
            "a statement ran: {out}"
        );
    }
    for t in &targets {
        assert!(!t.exists(), "{} was written", t.display());
    }
    assert!(!outside.join("ext.csv").exists());
    assert_eq!(tree_state(&lake), before, "a file of the lake changed");
    // Reads still run on the simple protocol, with rows.
    let (ok, out) = psql_simple(&server, "SELECT 40 + 2; SELECT count(*) > 0 FROM ledger");
    assert!(ok, "{out}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["42", "t"]);
}

/// A table whose Delta log cannot be read fails only the queries that name it, with its name;
/// the other tables and catalog browsing go on, and the table comes back once repaired.
#[test]
fn one_unreadable_table_does_not_break_the_catalog() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let server = Server::start(dir.path(), None, &[]);
    let log = dir.path().join("lake/ledger/_delta_log");
    let version = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max()
        .unwrap();
    let torn = log.join(format!("{:020}.json", version + 1));
    std::fs::write(&torn, "{\"add\": {\"path\": tor").unwrap();

    let (ok, out) = psql_simple(&server, "SELECT count(*) FROM ledger");
    assert!(
        !ok && out.contains("ledger") && out.contains("cannot be read"),
        "{out}"
    );
    let flight = adbc(
        &server,
        NO_AUTH,
        "cur = conn.cursor()\ntry:\n    cur.execute('SELECT count(*) FROM ledger'); print(cur.fetchall())\nexcept Exception as e:\n    print('failed', e)",
    );
    assert!(
        flight.starts_with("failed") && flight.contains("ledger"),
        "{flight}"
    );
    // The rest of the lake is served.
    let (ok, out) = psql_simple(&server, "SELECT count(*) > 0 FROM runs");
    assert!(ok && out.trim() == "t", "{out}");
    assert_eq!(
        adbc(
            &server,
            NO_AUTH,
            &print_rows_py("SELECT count(*) > 0 FROM runs")
        )
        .trim(),
        "True"
    );
    let (ok, out) = psql_simple(&server, "\\dt");
    assert!(ok && out.contains("runs"), "{out}");

    std::fs::remove_file(&torn).unwrap();
    let (ok, out) = psql_simple(&server, "SELECT count(*) > 0 FROM ledger");
    assert!(ok && out.trim() == "t", "repaired table not back: {out}");
}

/// A self-signed certificate for localhost and 127.0.0.1, made with the openssl command line;
/// returns (cert, key) paths.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// With --tls-cert/--tls-key every endpoint speaks TLS, verified against the certificate by
/// clients tally did not write: psql (sslmode=verify-full), ADBC (grpc+tls) and curl (https).
#[test]
fn tls_on_every_endpoint_with_a_certificate_the_clients_verify() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let (cert, key) = self_signed(dir.path());
    let token = "tls-test-token";
    let server = Server::start(
        dir.path(),
        Some(token),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let want = psql_simple_tls(
        &server,
        &cert,
        token,
        "verify-full",
        "SELECT count(*) FROM ledger",
    );
    assert!(want.0, "psql over TLS: {}", want.1);
    let n: u64 = want.1.trim().parse().unwrap();
    assert!(n > 0);
    // psql's own report of the connection: TLS it is.
    let info = psql_simple_tls(&server, &cert, token, "require", "\\conninfo");
    assert!(info.0 && info.1.contains("SSL connection"), "{}", info.1);

    let script = format!(
        "import adbc_driver_flightsql.dbapi as f\n\
         conn = f.connect('grpc+tls://{}', db_kwargs={{'adbc.flight.sql.client_option.tls_root_certs': open({:?}).read(), 'username': 'x', 'password': {token:?}}})\n\
         cur = conn.cursor(); cur.execute('SELECT count(*) FROM ledger'); print(cur.fetchall()[0][0])",
        server.flight.replace("127.0.0.1", "localhost"),
        cert.to_str().unwrap()
    );
    let flight = String::from_utf8(python(&script)).unwrap();
    assert_eq!(flight.trim(), n.to_string());
    // The plain-text wire is not answered on the TLS Flight SQL port.
    let plain = format!(
        "import adbc_driver_flightsql.dbapi as f\n\
         try:\n\
         \x20   conn = f.connect('grpc://{}', db_kwargs={{'username': 'x', 'password': {token:?}}})\n\
         \x20   cur = conn.cursor(); cur.execute('SELECT 1'); print('ran')\n\
         except Exception as e:\n\
         \x20   print('failed')",
        server.flight
    );
    assert_eq!(String::from_utf8(python(&plain)).unwrap().trim(), "failed");

    let port = server.http.rsplit(':').next().unwrap();
    let https = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&cert)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://localhost:{port}/metrics"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&https.stdout);
    assert!(
        https.status.success() && body.contains("tally_serve_queries"),
        "{body}"
    );
}

/// psql with `sslmode` against `cert` as the root; (success, output).
fn psql_simple_tls(
    server: &Server,
    cert: &Path,
    password: &str,
    mode: &str,
    sql: &str,
) -> (bool, String) {
    let conn = format!(
        "host=localhost port={} user=analyst dbname=tally sslmode={mode} sslrootcert={}",
        server.pg_port(),
        cert.display()
    );
    let out = Command::new("psql")
        .args([
            conn.as_str(),
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_token_is_required_on_every_endpoint_and_never_printed() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let token = "tok-3c8f1e2a9b";
    // -vv: every log line the server writes, to show none of them has the token.
    let server = Server::start(dir.path(), Some(token), &["-vv"]);
    let q = print_rows_py("SELECT count(*) FROM ledger");

    // Without or with a wrong token the driver's first call (its handshake) is refused.
    let refused = |kw: &str| {
        let script = format!(
            "import adbc_driver_flightsql.dbapi as f\n\
             try:\n\
             \x20   c = f.connect('grpc://{}', **{kw})\n\
             \x20   cur = c.cursor(); cur.execute('SELECT 1'); cur.fetchall(); print('ran')\n\
             except Exception as e:\n\
             \x20   print('refused', e)",
            server.flight
        );
        String::from_utf8(python(&script)).unwrap()
    };
    let missing = refused(NO_AUTH);
    assert!(missing.starts_with("refused"), "{missing}");
    assert!(missing.contains("UNAUTHENTICATED"), "{missing}");
    let wrong = refused("{'db_kwargs': {'adbc.flight.sql.authorization_header': 'Bearer nope'}}");
    assert!(wrong.starts_with("refused"), "{wrong}");
    assert!(wrong.contains("UNAUTHENTICATED"), "{wrong}");
    let wrong = refused("{'db_kwargs': {'username': 'x', 'password': 'nope'}}");
    assert!(wrong.starts_with("refused"), "{wrong}");
    let bearer = adbc(
        &server,
        &format!("{{'db_kwargs': {{'adbc.flight.sql.authorization_header': 'Bearer {token}'}}}}"),
        &q,
    );
    assert!(bearer.trim().parse::<u64>().unwrap() > 0, "{bearer}");
    let basic = adbc(
        &server,
        &format!("{{'db_kwargs': {{'username': 'bi-tool', 'password': '{token}'}}}}"),
        &q,
    );
    assert_eq!(basic, bearer, "basic auth answered with a bearer token");

    let script = format!(
        "import psycopg\ntry:\n    psycopg.connect(host='127.0.0.1', port={}, user='x', dbname='tally', password='nope')\nexcept psycopg.OperationalError as e:\n    print('refused', e)",
        server.pg_port()
    );
    let refused = String::from_utf8(python(&script)).unwrap();
    assert!(refused.starts_with("refused"), "{refused}");
    assert!(
        refused.contains("28P01") || refused.to_lowercase().contains("password"),
        "{refused}"
    );
    let right = psycopg(&server, Some(token), &q);
    assert_eq!(right, bearer);

    let http = |path: &str, auth: Option<&str>| -> u16 {
        let mut args = vec![
            "-s".to_string(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
        ];
        if let Some(a) = auth {
            args.push("-H".into());
            args.push(format!("Authorization: {a}"));
        }
        args.push(format!("http://{}{path}", server.http));
        let out = Command::new("curl").args(&args).output().unwrap();
        String::from_utf8(out.stdout).unwrap().parse().unwrap()
    };
    assert_eq!(http("/health", None), 200);
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("wall-screen:{token}"))
    );
    for path in [
        "/",
        "/assets/dashboard.js",
        "/api/live",
        "/api/status",
        "/metrics",
    ] {
        assert_eq!(http(path, None), 401, "{path}");
        assert_eq!(http(path, Some("Bearer nope")), 401, "{path}");
        assert_eq!(http(path, Some(&format!("Bearer {token}"))), 200, "{path}");
        assert_eq!(http(path, Some(&basic)), 200, "{path}");
    }

    let (code, logs) = server.terminate();
    assert_eq!(code, Some(0));
    assert!(
        logs.contains("shutting down"),
        "the output was captured: {logs}"
    );
    assert!(
        !logs.contains(token),
        "the token appeared in the server output"
    );
}

#[test]
fn sixteen_concurrent_clients_get_exact_answers() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let want = expected_sums(dir.path(), DAY);
    let server = Server::start(dir.path(), None, &["--memory-limit", "512MiB"]);
    let sql = per_partner_sql(DAY);
    let script = format!(
        "import threading, psycopg, adbc_driver_flightsql.dbapi as f\n\
         out = {{}}\n\
         def pg(i):\n\
         \x20   with psycopg.connect(host='127.0.0.1', port={port}, user='u', dbname='tally', autocommit=True) as c:\n\
         \x20       for _ in range(5):\n\
         \x20           out[('pg', i)] = c.execute({sql:?}).fetchall()\n\
         def fl(i):\n\
         \x20   with f.connect('grpc://{flight}') as c:\n\
         \x20       cur = c.cursor()\n\
         \x20       for _ in range(5):\n\
         \x20           cur.execute({sql:?}); out[('fl', i)] = cur.fetchall()\n\
         ts = [threading.Thread(target=pg if i % 2 else fl, args=(i,)) for i in range(16)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n\
         answers = set(repr(v) for v in out.values())\n\
         print(len(out), len(answers))\n\
         for r in next(iter(out.values())):\n\
         \x20   print('\\t'.join(str(v) for v in r))",
        port = server.pg_port(),
        flight = server.flight,
    );
    let out = String::from_utf8(python(&script)).unwrap();
    let (head, rows) = out.split_once('\n').unwrap();
    assert_eq!(
        head, "16 1",
        "every client got an answer, all the same: {out}"
    );
    assert_eq!(sums_from_lines(rows), want);
}

/// Beyond `--max-concurrent-queries` a burst waits in the queue (seen in /metrics) and every
/// query is answered, on both wires; beyond `--max-connections` Postgres connections are
/// refused with 53300 and counted.
#[test]
fn a_burst_beyond_the_query_cap_queues_and_every_query_is_answered() {
    let dir = tempdir();
    generate(dir.path(), 1, 4000, 8);
    let server = Server::start(
        dir.path(),
        None,
        &["--max-concurrent-queries", "1", "--max-connections", "8"],
    );
    // A nested-loop join: a second or so of work for each query.
    let sql = "SELECT count(*) FROM raw_payments a JOIN raw_payments b ON a.amount > b.amount";
    let script = format!(
        "import threading, time, urllib.request, psycopg, adbc_driver_flightsql.dbapi as f\n\
         out = {{}}\n\
         queued = []\n\
         def pg(i):\n\
         \x20   with psycopg.connect(host='127.0.0.1', port={port}, user='u', dbname='tally', autocommit=True) as c:\n\
         \x20       out[('pg', i)] = c.execute({sql:?}).fetchall()\n\
         def fl(i):\n\
         \x20   with f.connect('grpc://{flight}') as c:\n\
         \x20       cur = c.cursor(); cur.execute({sql:?}); out[('fl', i)] = cur.fetchall()\n\
         def watch():\n\
         \x20   while len(out) < 6:\n\
         \x20       m = urllib.request.urlopen('http://{http}/metrics').read().decode()\n\
         \x20       queued.extend(float(l.split()[1]) for l in m.splitlines() if l.startswith('tally_serve_queries_queued '))\n\
         \x20       time.sleep(0.05)\n\
         ts = [threading.Thread(target=pg if i % 2 else fl, args=(i,)) for i in range(6)]\n\
         w = threading.Thread(target=watch); w.start()\n\
         [t.start() for t in ts]; [t.join() for t in ts]; w.join()\n\
         print(len(out), len(set(repr(v) for v in out.values())), int(max(queued)))",
        port = server.pg_port(),
        flight = server.flight,
        http = server.http,
    );
    let out = String::from_utf8(python(&script)).unwrap();
    let f: Vec<u64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!(&f[..2], [6, 1], "every query answered, all alike: {out}");
    assert!(f[2] >= 1, "no query ever waited in the queue: {out}");

    // Eight connections open (seven Postgres, one Flight SQL); a ninth on either wire is
    // refused, on the Postgres wire as Postgres refuses it.
    let script = format!(
        "import psycopg, adbc_driver_flightsql.dbapi as f\n\
         held = [psycopg.connect(host='127.0.0.1', port={port}, user='u', dbname='tally') for _ in range(7)]\n\
         fl = f.connect('grpc://{flight}'); cur = fl.cursor(); cur.execute('SELECT 1'); cur.fetchall()\n\
         try:\n\
         \x20   psycopg.connect(host='127.0.0.1', port={port}, user='u', dbname='tally'); print('connected')\n\
         except psycopg.OperationalError as e:\n\
         \x20   print('refused', 'too many clients' in str(e))\n\
         try:\n\
         \x20   c2 = f.connect('grpc://{flight}'); k = c2.cursor(); k.execute('SELECT 1'); k.fetchall(); print('flight connected')\n\
         except Exception as e:\n\
         \x20   print('flight refused')\n\
         held.pop().close()\n\
         import time\n\
         for _ in range(50):\n\
         \x20   try:\n\
         \x20       psycopg.connect(host='127.0.0.1', port={port}, user='u', dbname='tally').execute('SELECT 1'); print('after one closed: ok'); break\n\
         \x20   except psycopg.OperationalError:\n\
         \x20       time.sleep(0.1)",
        port = server.pg_port(),
        flight = server.flight,
    );
    let out = String::from_utf8(python(&script)).unwrap();
    assert_eq!(
        out.trim(),
        "refused True\nflight refused\nafter one closed: ok",
        "{out}"
    );
    assert!(
        gauge(
            &server,
            "tally_serve_connections_refused_total{endpoint=\"flight-sql\"}"
        ) >= 1
    );
}

fn reserved_bytes(server: &Server) -> u64 {
    gauge(server, "tally_serve_memory_reserved_bytes")
}

fn counter(server: &Server, endpoint: &str, outcome: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{}/metrics", server.http)])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let prefix =
        format!("tally_serve_queries_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|v| v.parse::<u64>().unwrap())
        .unwrap_or(0)
}

/// A query that holds memory for a long time: a distinct count over billions of values.
const HEAVY: &str = "SELECT count(DISTINCT value % 1000000007) FROM range(0, 4000000000)";

#[test]
fn a_cancelled_or_timed_out_query_stops_and_frees_its_memory() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let server = Server::start(
        dir.path(),
        None,
        &["--memory-limit", "1GiB", "--query-timeout", "4s"],
    );
    // Postgres CancelRequest while the plan runs.
    let script = format!(
        "import threading, time, psycopg, urllib.request\n\
         conn = psycopg.connect(host='127.0.0.1', port={port}, user='u', dbname='tally', autocommit=True)\n\
         def cancel():\n\
         \x20   for _ in range(100):\n\
         \x20       text = urllib.request.urlopen('http://{http}/metrics').read().decode()\n\
         \x20       line = [l for l in text.splitlines() if l.startswith('tally_serve_memory_reserved_bytes ')][0]\n\
         \x20       if float(line.split()[1]) > 0:\n\
         \x20           print('reserved while running', flush=True)\n\
         \x20           break\n\
         \x20       time.sleep(0.05)\n\
         \x20   conn.cancel()\n\
         threading.Thread(target=cancel).start()\n\
         t = time.time()\n\
         try:\n\
         \x20   conn.execute({HEAVY:?}).fetchall(); print('finished')\n\
         except psycopg.errors.QueryCanceled as e:\n\
         \x20   print('cancelled', round(time.time() - t, 1), e.sqlstate)\n",
        port = server.pg_port(),
        http = server.http,
    );
    let out = String::from_utf8(python(&script)).unwrap();
    assert!(out.contains("reserved while running"), "{out}");
    assert!(out.contains("cancelled"), "{out}");
    assert!(out.contains("57014"), "{out}");
    wait_until_freed(&server);
    assert_eq!(counter(&server, "pg", "cancelled"), 1);

    // Postgres statement_timeout (shorter than the server's) stops it too.
    let pg_timeout = psycopg(
        &server,
        None,
        &format!(
            "conn.execute(\"SET statement_timeout = '1s'\")\n\
             try:\n\
             \x20   conn.execute({HEAVY:?}).fetchall(); print('finished')\n\
             except psycopg.errors.QueryCanceled as e:\n\
             \x20   print('stopped', e)"
        ),
    );
    assert!(pg_timeout.contains("stopped"), "{pg_timeout}");
    assert!(pg_timeout.contains("statement timeout"), "{pg_timeout}");
    wait_until_freed(&server);
    assert_eq!(counter(&server, "pg", "timeout"), 1);

    // Flight SQL: the query timeout stops it.
    let flight = adbc(
        &server,
        NO_AUTH,
        &format!(
            "import time\ncur = conn.cursor()\nt = time.time()\n\
             try:\n\
             \x20   cur.execute({HEAVY:?}); cur.fetchall(); print('finished')\n\
             except Exception as e:\n\
             \x20   print('stopped', round(time.time() - t, 1), e)"
        ),
    );
    assert!(flight.starts_with("stopped"), "{flight}");
    assert!(flight.contains("query-timeout"), "{flight}");
    wait_until_freed(&server);
    assert_eq!(counter(&server, "flight-sql", "timeout"), 1);

    // The server is still up and answers.
    let n = psycopg(&server, None, &print_rows_py("SELECT count(*) FROM ledger"));
    assert!(n.trim().parse::<u64>().unwrap() > 0);
    assert!(counter(&server, "pg", "ok") >= 1);
}

fn gauge(server: &Server, name: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{}/metrics", server.http)])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let prefix = format!("{name} ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|v| v.parse::<f64>().unwrap() as u64)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// A cursor is a query left open: it holds a query slot while open (FETCH and CLOSE do not
/// queue for another), ends at the query timeout from its DECLARE, frees its memory when it
/// does, and a connection holds at most eight.
#[test]
fn cursors_hold_a_slot_end_at_the_timeout_and_are_bounded_per_connection() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let server = Server::start(
        dir.path(),
        None,
        &[
            "--max-concurrent-queries",
            "2",
            "--query-timeout",
            "4s",
            "--memory-limit",
            "1GiB",
        ],
    );
    let running = "tally_serve_queries_running";
    // Exact rows through a cursor, fetched in pieces (psql's simple protocol, one transaction).
    let (ok, out) = psql_simple(
        &server,
        "BEGIN; DECLARE c CURSOR FOR SELECT value FROM range(0, 5) ORDER BY value; \
         FETCH 2 FROM c; FETCH 2 FROM c; FETCH ALL FROM c; CLOSE c; COMMIT",
    );
    assert!(ok, "{out}");
    let values: Vec<&str> = out.lines().filter(|l| l.parse::<u64>().is_ok()).collect();
    assert_eq!(values, ["0", "1", "2", "3", "4"], "{out}");

    // Two open cursors take both slots, and fetching from them does not wait for a third.
    let script = format!(
        "import psycopg, time, urllib.request\n\
         def running():\n\
         \x20   m = urllib.request.urlopen('http://{http}/metrics').read().decode()\n\
         \x20   return [int(float(l.split()[1])) for l in m.splitlines() if l.startswith('{running} ')][0]\n\
         c = psycopg.connect(host='127.0.0.1', port={port}, user='u', dbname='tally')\n\
         c.execute('DECLARE a CURSOR FOR SELECT value FROM range(0, 100000000)')\n\
         c.execute('DECLARE b CURSOR FOR SELECT value FROM range(0, 100000000)')\n\
         print('running', running())\n\
         print('fetched', c.execute('FETCH 3 FROM a').fetchall(), c.execute('FETCH 1 FROM b').fetchall())\n\
         c.execute('CLOSE a')\n\
         print('after close', running())\n\
         for n in range(2, 9): c.execute(f'DECLARE x{{n}} CURSOR FOR SELECT 1')\n\
         try:\n\
         \x20   c.execute('DECLARE x9 CURSOR FOR SELECT 1'); print('ninth declared')\n\
         except psycopg.Error as e:\n\
         \x20   print('ninth', e.sqlstate, str(e).strip())\n\
         c.rollback()\n\
         d = psycopg.connect(host='127.0.0.1', port={port}, user='u', dbname='tally')\n\
         d.execute({heavy:?})\n\
         t = time.time()\n\
         try:\n\
         \x20   d.execute('FETCH 1 FROM h').fetchall(); print('heavy fetched')\n\
         except psycopg.Error as e:\n\
         \x20   print('heavy', e.sqlstate, round(time.time() - t))\n\
         d.rollback()\n\
         e = psycopg.connect(host='127.0.0.1', port={port}, user='u', dbname='tally')\n\
         e.execute('DECLARE late CURSOR FOR SELECT value FROM range(0, 10)')\n\
         time.sleep(5)\n\
         try:\n\
         \x20   e.execute('FETCH 1 FROM late').fetchall(); print('late fetched')\n\
         except psycopg.Error as ex:\n\
         \x20   print('late', ex.sqlstate)\n\
         print('finally', running())",
        http = server.http,
        port = server.pg_port(),
        heavy = format!("DECLARE h CURSOR FOR {HEAVY}"),
    );
    let out = String::from_utf8(python(&script)).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "running 2", "{out}");
    assert_eq!(lines[1], "fetched [(0,), (1,), (2,)] [(0,)]", "{out}");
    assert_eq!(lines[2], "after close 1", "{out}");
    assert!(
        lines[3].starts_with("ninth 53400") && lines[3].contains("at most 8"),
        "{out}"
    );
    // The heavy cursor is stopped by its deadline within the fetch, not left running.
    assert!(lines[4].starts_with("heavy 57014"), "{out}");
    // A cursor outliving the timeout from its DECLARE ends with the timeout error.
    assert_eq!(lines[5], "late 57014", "{out}");
    assert_eq!(lines[6], "finally 0", "{out}");
    wait_until_freed(&server);
    assert_eq!(gauge(&server, running), 0, "a slot still held");
}

fn wait_until_freed(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reserved = reserved_bytes(server);
        if reserved == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{reserved} bytes still reserved after the query stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_stops_the_server_with_exit_0() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let server = Server::start(dir.path(), None, &[]);
    let n = adbc(
        &server,
        NO_AUTH,
        &print_rows_py("SELECT count(*) FROM ledger"),
    );
    assert!(n.trim().parse::<u64>().unwrap() > 0);
    assert_eq!(server.terminate().0, Some(0));
}

#[test]
fn a_network_address_without_a_token_is_refused() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let err = tally_fails(
        dir.path(),
        &[
            "serve",
            "--http",
            "off",
            "--flight-sql",
            "off",
            "--pg",
            "0.0.0.0:0",
        ],
        2,
    );
    assert!(err.contains("TALLY_TOKEN"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn serve_live_ingests_and_serves_in_one_process() {
    let dir = tempdir();
    generate(dir.path(), 1, 2000, 5);
    let server = Server::start(dir.path(), None, &["--live", "--interval", "200ms"]);
    let script = "import time\n\
        for _ in range(150):\n\
        \x20   try:\n\
        \x20       n = conn.execute('SELECT sum(events) FROM live_view').fetchone()[0]\n\
        \x20   except psycopg.Error:\n\
        \x20       n = None\n\
        \x20   if n:\n\
        \x20       break\n\
        \x20   time.sleep(0.2)\n\
        print(n)";
    let events: u64 = psycopg(&server, None, script).trim().parse().unwrap();
    assert!(events > 0, "the live view filled while serving");
    let (code, _) = server.terminate();
    assert_eq!(code, Some(0));
}

/// SIGTERM while files land and clients query: the loop finishes its batch, writes its
/// checkpoint and prints its summary before the server exits; a `tally live --once` after it
/// then applies only what was left, and the totals are exact.
#[test]
fn sigterm_under_load_stops_serve_live_after_its_batch() {
    use crate::live::{expected, read_totals, traffic};
    let dir = tempdir();
    let lake = dir.path().join("lake");
    let rows = traffic("s", micros("2026-11-20T10:00:00Z"), 50_000, 12_000);
    let chunks: Vec<&[RawRow]> = rows.chunks(300).collect();
    for (i, chunk) in chunks[..10].iter().enumerate() {
        write_raw(&lake, "2026-11-20", &format!("f{i:03}.parquet"), chunk);
    }
    let server = Server::start(
        dir.path(),
        None,
        &[
            "--live",
            "--interval",
            "100ms",
            "--max-files-per-batch",
            "3",
        ],
    );
    for (i, chunk) in chunks.iter().enumerate().skip(10) {
        write_raw(&lake, "2026-11-20", &format!("f{i:03}.parquet"), chunk);
        if i % 5 == 0 {
            let _ = psycopg(
                &server,
                None,
                &print_rows_py("SELECT count(*) FROM live_view"),
            );
        }
    }
    let (code, logs) = server.terminate();
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("live: "), "no live summary at exit: {logs}");
    // Whatever the loop had not reached is applied now, and nothing twice.
    tally_ok(dir.path(), &["live", "--once"]);
    assert_eq!(read_totals(dir.path(), "live_view"), expected(&rows));
}

#[test]
fn the_postgres_jdbc_driver_browses_and_queries_with_prepared_statements() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let want = expected_sums(dir.path(), DAY);
    let (rows, total): (u64, i128) = want.values().fold((0, 0), |a, v| (a.0 + v.1, a.1 + v.0));
    let token = "jdbc-tok-77";
    let server = Server::start(dir.path(), Some(token), &[]);
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/e2e/clients/JdbcCheck.java"
    );
    let out = Command::new("java")
        .args([
            "-cp",
            "/usr/share/java/postgresql.jar",
            source,
            server.pg_port(),
            token,
            DAY,
        ])
        .output()
        .expect("java (scripts/test installs a JRE and Debian's pgjdbc)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "JdbcCheck: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("table ledger\n"), "{stdout}");
    assert!(stdout.contains("table raw_payments\n"), "{stdout}");
    assert!(stdout.contains("column amount numeric\n"), "{stdout}");
    assert!(
        stdout.contains("column event_time timestamptz\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("sum {rows} {}\n", cents(total))),
        "{stdout}"
    );
}

/// A repeated query is answered from the result cache while the ledger is unchanged, on both
/// wires, and a commit makes the next one run again: answers stay exact across the commit. A
/// query with a volatile function is never kept.
#[test]
fn repeated_queries_are_answered_from_the_cache_until_a_commit() {
    let dir = tempdir();
    lake_with_ledger(dir.path());
    let server = Server::start(dir.path(), None, &[]);
    let sql =
        "SELECT event_date, count(*) AS n FROM ledger GROUP BY event_date ORDER BY event_date";
    let day_count: u64 = expected_sums(dir.path(), DAY).values().map(|v| v.1).sum();
    let next_count: u64 = expected_sums(dir.path(), NEXT_DAY)
        .values()
        .map(|v| v.1)
        .sum();
    let one_day = format!("{DAY}\t{day_count}");
    let twice = format!("{}\n{}", print_rows_py(sql), print_rows_py(sql));
    assert_eq!(
        psycopg(&server, None, &twice).trim(),
        format!("{one_day}\n{one_day}")
    );
    assert_eq!(adbc(&server, NO_AUTH, &print_rows_py(sql)).trim(), one_day);
    let hits = gauge(&server, "tally_serve_result_cache_hits_total");
    assert!(hits >= 2, "second and third runs hit: {hits}");
    assert!(gauge(&server, "tally_serve_result_cache_bytes") > 0);

    // random() is volatile: two runs, two answers.
    let random = "SELECT max(amount) * 0 + random() AS r FROM ledger";
    let two = psycopg(&server, None, &twice.replace(sql, random));
    let lines: Vec<&str> = two.lines().collect();
    assert_eq!(lines.len(), 2, "{two}");
    assert_ne!(lines[0], lines[1], "a volatile query must run each time");

    // Another process commits the next day: the same statement now reads the new version.
    tally_ok(dir.path(), &["ledger", "--date", NEXT_DAY]);
    let two_days = format!("{one_day}\n{NEXT_DAY}\t{next_count}");
    assert_eq!(psycopg(&server, None, &print_rows_py(sql)).trim(), two_days);
    assert_eq!(adbc(&server, NO_AUTH, &print_rows_py(sql)).trim(), two_days);
    let misses = gauge(&server, "tally_serve_result_cache_misses_total");
    assert!(
        misses >= 2,
        "the first run and the run after the commit miss: {misses}"
    );
}
