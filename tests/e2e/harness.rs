//! Helpers shared by the end-to-end modules: running `tally`, making lakes, reading raw files
//! independently of the engine, and the S3 server.

#![allow(dead_code)]

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Decimal128Type, TimestampMicrosecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// The built binary under test.
pub fn tally_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tally")
}

/// A `tally` command with a clean environment (no AWS_*/TALLY_*/DATAFUSION_* leaking in) in `dir`.
pub fn tally_cmd(dir: &Path) -> Command {
    let mut c = Command::new(tally_bin());
    c.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_")
            || k.starts_with("TALLY_")
            || k.starts_with("DATAFUSION_")
            || k == "RUST_LOG"
        {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1");
    c
}

/// Runs `tally` with args in `dir` and returns its output.
pub fn tally(dir: &Path, args: &[&str]) -> Output {
    tally_cmd(dir).args(args).output().expect("run tally")
}

/// Runs `tally` with args in `dir`, asserting success, and returns stdout.
pub fn tally_ok(dir: &Path, args: &[&str]) -> String {
    run_ok(tally_cmd(dir).args(args))
}

/// Runs a prepared command (e.g. one pointed at S3), asserting success; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tally");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

/// Runs `tally` expecting exit code `code`; returns stderr.
pub fn tally_fails(dir: &Path, args: &[&str], code: i32) -> String {
    let out = tally(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "tally {args:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// A fresh temp directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Generates a small lake in `dir/lake` with the binary.
pub fn generate(dir: &Path, days: u32, events: u64, seed: u64) {
    tally_ok(
        dir,
        &[
            "generate",
            "--days",
            &days.to_string(),
            "--events-per-day",
            &events.to_string(),
            "--seed",
            &seed.to_string(),
        ],
    );
}

/// One raw row, read independently of the engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawRow {
    pub txn_id: String,
    pub partner_id: String,
    pub event_time: i64,
    pub ingest_time: i64,
    pub amount: i128,
    pub currency: String,
    pub status: String,
    /// `YYYY-MM-DD` from the file's `ingest_date=` directory.
    pub ingest_date: String,
    pub file: PathBuf,
}

/// A raw row of a transaction in EUR with status `ok` (the file fields left empty).
pub fn ok_row(txn: &str, partner: &str, event: i64, ingest: i64, cents: i128) -> RawRow {
    RawRow {
        txn_id: txn.into(),
        partner_id: partner.into(),
        event_time: event,
        ingest_time: ingest,
        amount: cents,
        currency: "EUR".into(),
        status: "ok".into(),
        ingest_date: String::new(),
        file: Default::default(),
    }
}

/// Copies a directory tree (a lake, to crash a run on a copy of it).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The newest commit file of the Delta table at `table`, as text.
pub fn last_commit(table: &Path) -> String {
    let last = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .max()
        .unwrap();
    std::fs::read_to_string(last).unwrap()
}

/// Runs a Python script (with deltalake-python, which scripts/test installs) and returns its
/// stdout; fails the test when it fails.
pub fn python(script: &str) -> Vec<u8> {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3 (deltalake-python: scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Writes one record batch as a Parquet file.
pub fn write_parquet(path: &Path, batch: RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// The raw file schema as a writer outside tally would produce it (plain strings).
pub fn raw_file_schema(txn_id_nullable: bool) -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    std::sync::Arc::new(Schema::new(vec![
        Field::new("txn_id", DataType::Utf8, txn_id_nullable),
        Field::new("partner_id", DataType::Utf8, true),
        Field::new("event_time", ts.clone(), true),
        Field::new("ingest_time", ts, true),
        Field::new("amount", DataType::Decimal128(18, 2), true),
        Field::new("currency", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
    ]))
}

/// Writes raw rows as a raw-payments file `name` in `lake/raw/payments/ingest_date=<day>/`
/// (the row's `ingest_date` and `file` fields are ignored).
pub fn write_raw(lake: &Path, day: &str, name: &str, rows: &[RawRow]) {
    use arrow::array::{ArrayRef, Decimal128Array, StringArray, TimestampMicrosecondArray};
    use std::sync::Arc;
    let schema = raw_file_schema(false);
    let s = |f: &dyn Fn(&RawRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let t = |f: &dyn Fn(&RawRow) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"),
        )
    };
    let amount: ArrayRef = Arc::new(
        Decimal128Array::from_iter_values(rows.iter().map(|r| r.amount))
            .with_precision_and_scale(18, 2)
            .unwrap(),
    );
    let batch = RecordBatch::try_new(
        schema,
        vec![
            s(&|r| &r.txn_id),
            s(&|r| &r.partner_id),
            t(&|r| r.event_time),
            t(&|r| r.ingest_time),
            amount,
            s(&|r| &r.currency),
            s(&|r| &r.status),
        ],
    )
    .unwrap();
    let dir = lake.join(format!("raw/payments/ingest_date={day}"));
    std::fs::create_dir_all(&dir).unwrap();
    // Write then rename, as a landing job would: a reader never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    write_parquet(&tmp, batch);
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A one-row raw file of the wrong schema: `amount` is a float (Float64), everything else as
/// the raw schema says; its one copy is `txn_id` at `at` µs.
pub fn write_float_amount_file(path: &Path, txn_id: &str, at: i64) {
    use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let wrong = Arc::new(Schema::new(
        raw_file_schema(true)
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "amount" => Arc::new(Field::new("amount", DataType::Float64, true)),
                _ => Arc::clone(f),
            })
            .collect::<Vec<_>>(),
    ));
    let s = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let ts =
        || Arc::new(TimestampMicrosecondArray::from(vec![at]).with_timezone("UTC")) as ArrayRef;
    let batch = RecordBatch::try_new(
        wrong,
        vec![
            s(txn_id),
            s("p1"),
            ts(),
            ts(),
            Arc::new(Float64Array::from(vec![1.5])),
            s("USD"),
            s("ok"),
        ],
    )
    .unwrap();
    write_parquet(path, batch);
}

/// Microseconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`.
pub fn micros(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

/// Every Parquet file under a directory, recursively, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read_batches(path: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(path).expect("open parquet");
    ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet reader")
        .build()
        .expect("build reader")
        .map(|b| b.expect("batch"))
        .collect()
}

/// The string at row `i` of a Utf8 or Utf8View column.
pub fn string_at(a: &dyn Array, i: usize) -> String {
    match a.data_type() {
        arrow::datatypes::DataType::Utf8View => a.as_string_view().value(i).to_string(),
        _ => a.as_string::<i32>().value(i).to_string(),
    }
}

/// Reads every raw row of a local lake's `raw/payments`.
pub fn read_raw(lake: &Path) -> Vec<RawRow> {
    let root = lake.join("raw/payments");
    let mut rows = Vec::new();
    for file in parquet_files(&root) {
        let ingest_date = file
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("ingest_date="))
            .expect("ingest_date dir")
            .to_string();
        for b in read_batches(&file) {
            let col = |n: &str| b.column_by_name(n).expect(n).clone();
            let (id, p, et, it, am, cu, st) = (
                col("txn_id"),
                col("partner_id"),
                col("event_time"),
                col("ingest_time"),
                col("amount"),
                col("currency"),
                col("status"),
            );
            let et = et.as_primitive::<TimestampMicrosecondType>();
            let it = it.as_primitive::<TimestampMicrosecondType>();
            let am = am.as_primitive::<Decimal128Type>();
            for i in 0..b.num_rows() {
                rows.push(RawRow {
                    txn_id: string_at(id.as_ref(), i),
                    partner_id: string_at(p.as_ref(), i),
                    event_time: et.value(i),
                    ingest_time: it.value(i),
                    amount: am.value(i),
                    currency: string_at(cu.as_ref(), i),
                    status: string_at(st.as_ref(), i),
                    ingest_date: ingest_date.clone(),
                    file: file.clone(),
                });
            }
        }
    }
    rows
}

/// Formats cents as the decimal text tally prints (`1234` → `12.34`).
pub fn cents(c: i128) -> String {
    let sign = if c < 0 { "-" } else { "" };
    let a = c.abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// Parses `tally sql --format csv` output into rows of fields (header dropped).
pub fn csv_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Rows and exact amount (as tally prints it) per key of the raw rows: what a
/// `SELECT key, count(*), sum(amount) … GROUP BY key` must answer.
pub fn count_and_sum_by(
    rows: &[RawRow],
    key: impl Fn(&RawRow) -> String,
) -> BTreeMap<String, (u64, String)> {
    let mut sums: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    for r in rows {
        let e = sums.entry(key(r)).or_default();
        e.0 += 1;
        e.1 += r.amount;
    }
    sums.into_iter()
        .map(|(k, (n, s))| (k, (n, cents(s))))
        .collect()
}

/// `key,count,sum` rows of `tally sql --format csv` output, by key.
pub fn csv_count_and_sum(out: &str) -> BTreeMap<String, (u64, String)> {
    csv_rows(out)
        .into_iter()
        .map(|f| (f[0].clone(), (f[1].parse().unwrap(), f[2].clone())))
        .collect()
}

/// Counts by key.
pub fn count_by<K: std::hash::Hash + Eq, T>(rows: &[T], key: impl Fn(&T) -> K) -> HashMap<K, u64> {
    let mut m = HashMap::new();
    for r in rows {
        *m.entry(key(r)).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// S3: a real S3-compatible server (moto) on loopback, started once per test run.

/// A running moto server.
pub struct S3Server {
    pub endpoint: String,
    _child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn http(endpoint_port: u16, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", endpoint_port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{endpoint_port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    Some(resp)
}

/// The shell command that starts the S3 test server (add `-H HOST -p PORT`): moto, with its
/// conditional writes made atomic (`tests/e2e/s3_server.py` says why).
pub fn s3_server_command() -> String {
    format!(
        "python3 '{}/../tests/e2e/s3_server.py'",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The shared S3 server; panics (fails the test loudly) if it cannot be started.
pub fn s3() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let port = free_port();
        let bin = std::env::var("TALLY_TEST_MOTO").unwrap_or_else(|_| s3_server_command());
        // A shell wrapper keeps the server only as long as this test process lives: a static
        // is never dropped, and CI must not be left with a stray server.
        let script = format!(
            "{bin} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; trap 'kill $m 2>/dev/null' EXIT; \
             while kill -0 {pid} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 1; done",
            pid = std::process::id()
        );
        // Killed by Drop, and the wrapper exits with this process anyway.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let found = Command::new("python3")
            .args(["-c", "import moto.server"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "cannot find the S3 test server (moto): install it with `pip install 'moto[server]'` (.ci/run does this)"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http(port, "GET", "/").is_some() {
                return S3Server {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    _child: child,
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("S3 test server did not answer on 127.0.0.1:{port} within 30 s");
    })
}

impl S3Server {
    fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// Creates a bucket (unique per test) and returns its name.
    pub fn bucket(&self, name: &str) -> String {
        let resp = http(self.port(), "PUT", &format!("/{name}")).expect("create bucket");
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "create bucket {name}: {resp}"
        );
        name.to_string()
    }

    /// Uploads the local file `from` as `bucket/key`, signed, as a lander would (boto3).
    pub fn put(&self, bucket: &str, key: &str, from: &Path) {
        let script = format!(
            "import boto3\n\
             s3 = boto3.client('s3', endpoint_url={endpoint:?}, aws_access_key_id='testing', \
             aws_secret_access_key='testing-secret', region_name='us-east-1')\n\
             s3.upload_file({from:?}, {bucket:?}, {key:?})",
            endpoint = self.endpoint,
            from = from.display().to_string(),
        );
        python(&script);
    }

    /// Uploads every file under the local folder `from` to `bucket/prefix/…`, keeping paths.
    pub fn put_dir(&self, bucket: &str, prefix: &str, from: &Path) {
        let script = format!(
            "import boto3, os\n\
             s3 = boto3.client('s3', endpoint_url={endpoint:?}, aws_access_key_id='testing', \
             aws_secret_access_key='testing-secret', region_name='us-east-1')\n\
             root = {from:?}\n\
             for d, _, names in os.walk(root):\n\
             \x20   for n in names:\n\
             \x20       p = os.path.join(d, n)\n\
             \x20       s3.upload_file(p, {bucket:?}, {prefix:?} + '/' + os.path.relpath(p, root))",
            endpoint = self.endpoint,
            from = from.display().to_string(),
        );
        python(&script);
    }

    /// A `tally` command pointed at this server with dummy credentials.
    pub fn cmd(&self, dir: &Path) -> Command {
        let mut c = tally_cmd(dir);
        c.envs(self.env());
        c
    }

    /// The environment that points a process at this server with dummy credentials.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self._child.kill();
    }
}

/// A running tally process (`serve` or `live`) with the addresses it printed; killed on drop.
pub struct Proc {
    pub child: Child,
    pub addrs: BTreeMap<String, String>,
    readers: Vec<std::thread::JoinHandle<String>>,
}

impl Proc {
    /// Starts `tally <args>` and waits for a `listening <name> <addr>` line for each of
    /// `names` (on stdout or stderr).
    pub fn start(dir: &Path, args: &[&str], names: &[&str]) -> Proc {
        Self::spawn(tally_cmd(dir).args(args), names)
    }

    /// Like [`Proc::start`], for a prepared command (extra environment, say).
    pub fn spawn(cmd: &mut Command, names: &[&str]) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<(String, String)>();
        let mut readers = Vec::new();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                let mut all = String::new();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    if parts.len() == 3 && parts[0] == "listening" {
                        let _ = tx.send((parts[1].to_string(), parts[2].to_string()));
                    }
                    all.push_str(&line);
                    all.push('\n');
                }
                all
            }));
        }
        let mut addrs = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while names.iter().any(|n| !addrs.contains_key(*n)) {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok((name, addr)) => {
                    addrs.insert(name, addr);
                }
                Err(_) => {
                    if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                        let _ = child.kill();
                        let logs: Vec<String> =
                            readers.into_iter().map(|r| r.join().unwrap()).collect();
                        panic!("tally ended before listening: {}", logs.join(""));
                    }
                }
            }
        }
        Proc {
            child,
            addrs,
            readers,
        }
    }

    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{path}", self.addrs[name])
    }

    /// SIGTERM; the exit code and everything printed.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "tally did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let logs = std::mem::take(&mut self.readers)
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect::<Vec<_>>()
            .join("");
        (code, logs)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the process is stopped (SIGSTOP at a failpoint).
pub fn wait_stopped(child: &Child) {
    let stat = format!("/proc/{}/stat", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        // The state is the field after the parenthesised command name.
        if s.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('T'))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the run did not reach its failpoint");
}

/// Sends `sig` (`-STOP`, `-CONT`, `-9`) to a child.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}
