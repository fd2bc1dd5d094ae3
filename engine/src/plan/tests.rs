//! The same answers with and without tally's query rules: keys in runs and not, nulls, long
//! keys sharing a dictionary's bytes, aggregate filters, one group per row (passing through)
//! and a memory pool too small for the groups (emitting early).

use super::with_query_rules;
use datafusion::arrow::array::{
    ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringViewArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::sync::Arc;

/// A context on 2 partitions, with the rules or without, its pool limited to `pool` bytes.
fn context(rules: bool, pool: Option<usize>, ratio: f64) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_target_partitions(2)
        .with_batch_size(1024);
    config
        .options_mut()
        .execution
        .skip_partial_aggregation_probe_ratio_threshold = ratio;
    config
        .options_mut()
        .execution
        .skip_partial_aggregation_probe_rows_threshold = 2_000;
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = pool {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(bytes)));
    }
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime.build_arc().unwrap())
        .with_default_features();
    if rules {
        state = with_query_rules(state);
    }
    SessionContext::new_with_state(state.build())
}

/// `t(k, n)` in 4 partitions of 2,500 rows: `k` a view column built by `key`, `n` the row.
fn table(key: impl Fn(usize) -> Option<String>, dictionary: bool) -> Arc<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8View, true),
        Field::new("n", DataType::Int64, false),
    ]));
    let partitions = (0..4)
        .map(|p| {
            let rows = p * 2_500..(p + 1) * 2_500;
            let keys: Vec<Option<String>> = rows.clone().map(&key).collect();
            let k: ArrayRef = if dictionary {
                // As Parquet's dictionary pages decode: views into one buffer of values.
                let dict: DictionaryArray<Int32Type> = keys.iter().map(|k| k.as_deref()).collect();
                cast(&dict, &DataType::Utf8View).unwrap()
            } else {
                Arc::new(StringViewArray::from_iter(
                    keys.iter().map(|k| k.as_deref()),
                ))
            };
            let n = Arc::new(Int64Array::from_iter_values(rows.map(|r| r as i64)));
            vec![RecordBatch::try_new(Arc::clone(&schema), vec![k, n]).unwrap()]
        })
        .collect();
    Arc::new(MemTable::try_new(schema, partitions).unwrap())
}

const QUERIES: [&str; 3] = [
    "SELECT k, count(*) AS c, sum(n) AS s, min(n) AS lo, max(n) AS hi FROM t GROUP BY k",
    "SELECT k, sum(n) FILTER (WHERE n % 3 = 0) AS s3, count(n) AS c FROM t GROUP BY k",
    "SELECT upper(k) AS u, avg(n) AS a FROM t WHERE n % 7 <> 0 GROUP BY upper(k)",
];

async fn answers(ctx: &SessionContext) -> Vec<String> {
    let mut out = Vec::new();
    for q in QUERIES {
        let batches = ctx.sql(q).await.unwrap().collect().await.unwrap();
        // Rows in any order (no ORDER BY: a sort would need more than the small pools).
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        out.push(lines.join("\n"));
    }
    out
}

/// Runs the queries with and without the rules on `t`, checks the rule placed its operator
/// and returns the `runs` metric of the first query's plan with it.
async fn same_answers(t: Arc<MemTable>, pool: Option<usize>, ratio: f64) -> String {
    let plain = context(false, pool, ratio);
    plain.register_table("t", t.clone()).unwrap();
    let ruled = context(true, pool, ratio);
    ruled.register_table("t", t).unwrap();
    assert_eq!(answers(&plain).await, answers(&ruled).await);
    let explain = ruled
        .sql(&format!("EXPLAIN ANALYZE {}", QUERIES[0]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = pretty_format_batches(&explain).unwrap().to_string();
    assert!(text.contains("RunGroupsExec"), "{text}");
    text
}

/// The value of metric `name` in an `EXPLAIN ANALYZE` text, as DataFusion prints counts
/// (`7`, `7.50 K`, `1.20 M`); `None` when it is not there.
fn metric(plan: &str, name: &str) -> Option<f64> {
    let text = plan
        .split(&format!(" {name}="))
        .nth(1)?
        .split([',', ']'])
        .next()?;
    let mut words = text.split_whitespace();
    let value: f64 = words.next()?.parse().ok()?;
    let scale = match words.next() {
        Some("K") => 1e3,
        Some("M") => 1e6,
        Some("B") => 1e9,
        _ => 1.0,
    };
    Some(value * scale)
}

fn partner(r: usize) -> Option<String> {
    Some(format!("partner-{:04}", r / 700))
}

#[tokio::test]
async fn keys_in_runs_give_the_same_groups_with_few_runs() {
    let plan = same_answers(table(partner, false), None, 0.8).await;
    // 10,000 rows in runs of 700: a few dozen runs, not 10,000 rows interned.
    let runs = metric(&plan, "runs").unwrap_or(f64::MAX);
    assert!(runs < 100.0, "runs={runs}: {plan}");
}

#[tokio::test]
async fn scattered_keys_nulls_and_long_keys_give_the_same_groups() {
    // No runs at all.
    same_answers(
        table(|r| Some(format!("p{}", (r * 7919) % 37)), false),
        None,
        0.8,
    )
    .await;
    // Nulls among runs.
    let with_nulls = |r: usize| (r % 900 >= 850).then_some(()).map_or(partner(r), |_| None);
    same_answers(table(with_nulls, false), None, 0.8).await;
    // Keys longer than a view's 12 inline bytes, decoded from a dictionary (equal views
    // share bytes) and built one by one (equal values, different views).
    let long = |r: usize| Some(format!("a-partner-with-a-long-name-{:03}", r / 300));
    same_answers(table(long, true), None, 0.8).await;
    same_answers(table(long, false), None, 0.8).await;
}

#[tokio::test]
async fn one_group_per_row_passes_rows_through() {
    let plan = same_answers(table(|r| Some(format!("txn-{r:08}")), false), None, 0.8).await;
    assert!(
        metric(&plan, "skipped_aggregation_rows").is_some_and(|n| n > 0.0),
        "{plan}"
    );
}

#[tokio::test]
async fn a_full_pool_emits_groups_early_with_the_same_answer() {
    // 10,000 groups, skipping off, in a pool that holds a fraction of them.
    let t = table(|r| Some(format!("txn-{r:08}")), false);
    let plan = same_answers(t, Some(1 << 20), 1.0).await;
    assert!(
        metric(&plan, "early_emits").is_some_and(|n| n > 0.0),
        "{plan}"
    );
}
