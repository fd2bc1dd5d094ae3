//! Unit tests of the partition sort: order across batches, deselected rows, many near-equal
//! ids against a plain sort, and out-of-line string views written as plain strings.

use super::*;
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

fn batch(partners: Vec<Option<&str>>, txns: Vec<&str>, n: Vec<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("txn_id", DataType::Utf8, false),
        Field::new("partner_id", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(txns)),
            Arc::new(StringArray::from(partners)),
            Arc::new(Int64Array::from(n)),
        ],
    )
    .unwrap()
}

/// The run's rows, sorted, in chunks of `chunk`.
fn sorted(run: SortedRun, chunk: usize) -> Vec<RecordBatch> {
    run.into_sorted_chunks(chunk)
        .unwrap()
        .collect::<Result<_>>()
        .unwrap()
}

/// (partner_id, txn_id) of each output row, in output order.
fn pairs(out: &[RecordBatch]) -> Vec<(Option<String>, String)> {
    out.iter()
        .flat_map(|b| {
            let p = b.column(1).as_string::<i32>().clone();
            let t = b.column(0).as_string::<i32>().clone();
            (0..b.num_rows())
                .map(move |i| {
                    let partner = (!p.is_null(i)).then(|| p.value(i).to_string());
                    (partner, t.value(i).to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn orders_by_partner_then_txn_across_batches_like_a_plain_sort() {
    let mut run = SortedRun::default();
    // Same 8-byte prefixes ("tx000000") force the full comparison; a null partner and
    // txn ids that are prefixes of each other ("a" < "a\0" < "ab") test the edges.
    run.push(batch(
        vec![Some("p2"), Some("p1"), None, Some("p1")],
        vec!["tx0000009", "tx0000001z", "zz", "a"],
        vec![0, 1, 2, 3],
    ));
    run.push(batch(
        vec![Some("p1"), Some("p2"), Some("p1")],
        vec!["tx0000001a", "tx0000002", "ab"],
        vec![4, 5, 6],
    ));
    run.push(batch(vec![Some("p1")], vec!["a\0"], vec![7]));
    assert_eq!(run.rows(), 8);
    let out = sorted(run, 3);
    assert_eq!(
        out.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
        vec![3, 3, 2]
    );
    let got = pairs(&out);
    let mut want = got.clone();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(got[0], (None, "zz".to_string()));
    let p1: Vec<&str> = got
        .iter()
        .filter(|(p, _)| p.as_deref() == Some("p1"))
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(p1, vec!["a", "a\0", "ab", "tx0000001a", "tx0000001z"]);
}

#[test]
fn rows_left_out_of_a_batch_are_not_written() {
    let mut run = SortedRun::default();
    run.push_selected(
        batch(
            vec![Some("p2"), Some("p1"), Some("p1")],
            vec!["c", "b", "a"],
            vec![0, 1, 2],
        ),
        Some(BooleanBuffer::from(vec![true, false, true])),
    );
    run.push_selected(
        batch(vec![Some("p1")], vec!["z"], vec![3]),
        Some(BooleanBuffer::from(vec![false])),
    );
    run.push(batch(vec![Some("p0")], vec!["y"], vec![4]));
    assert_eq!(run.rows(), 3);
    let out = sorted(run, 10);
    let n: Vec<i64> = out[0]
        .column(2)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .values()
        .to_vec();
    assert_eq!(n, vec![4, 2, 0]);
}

#[test]
fn many_rows_with_near_equal_ids_come_out_like_a_plain_sort() {
    // Ids are 9 bytes with few distinct 8-byte prefixes, so both the integer key order
    // and the full-id tie-break decide; a tenth of the rows are left out.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut run = SortedRun::default();
    let mut want = Vec::new();
    for b in 0..4 {
        let n = 3000;
        // Short names are inline in their string views, long ones are not.
        let partners: Vec<String> = (0..n)
            .map(|_| match next() % 6 {
                5 => "a partner name longer than 12 bytes".to_string(),
                k => format!("p{k}"),
            })
            .collect();
        let txns: Vec<String> = (0..n)
            .map(|_| format!("txn-{:02x}{:03}", next() % 3, next() % 1000))
            .collect();
        let keep: Vec<bool> = (0..n).map(|_| next() % 10 != 0).collect();
        for i in 0..n {
            if keep[i] {
                want.push((Some(partners[i].clone()), txns[i].clone()));
            }
        }
        let ns: Vec<i64> = (0..n as i64).map(|i| b * 10_000 + i).collect();
        run.push_selected(
            batch(
                partners.iter().map(|p| Some(p.as_str())).collect(),
                txns.iter().map(|t| t.as_str()).collect(),
                ns,
            ),
            Some(BooleanBuffer::from(keep)),
        );
    }
    want.sort();
    assert_eq!(pairs(&sorted(run, 1000)), want);
}

#[test]
fn out_of_line_string_views_come_out_as_plain_strings_in_sorted_order() {
    // As the aggregate emits them: string views; `txn_id` longer than a view's 12 inline
    // bytes (one null-free id per row), `status` inline.
    let schema = Arc::new(Schema::new(vec![
        Field::new("txn_id", DataType::Utf8View, false),
        Field::new("partner_id", DataType::Utf8View, true),
        Field::new("status", DataType::Utf8View, true),
    ]));
    let views = |v: Vec<Option<&str>>| Arc::new(StringViewArray::from(v)) as ArrayRef;
    let mut run = SortedRun::default();
    run.push(
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                views(vec![
                    Some("tx-0000000000000009"),
                    Some("tx-0000000000000001"),
                ]),
                views(vec![Some("p1"), Some("p1")]),
                views(vec![Some("ok"), None]),
            ],
        )
        .unwrap(),
    );
    run.push(
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                views(vec![Some("tx-0000000000000005"), Some("short")]),
                views(vec![Some("p0"), Some("p1")]),
                views(vec![Some("failed"), Some("ok")]),
            ],
        )
        .unwrap(),
    );
    let out = sorted(run, 10);
    let b = &out[0];
    assert_eq!(b.schema().field(0).data_type(), &DataType::Utf8);
    assert_eq!(b.schema().field(2).data_type(), &DataType::Utf8View);
    let txn: Vec<&str> = b.column(0).as_string::<i32>().iter().flatten().collect();
    assert_eq!(
        txn,
        vec![
            "tx-0000000000000005",
            "short",
            "tx-0000000000000001",
            "tx-0000000000000009"
        ]
    );
    let status: Vec<Option<&str>> = b.column(2).as_string_view().iter().collect();
    assert_eq!(status, vec![Some("failed"), Some("ok"), None, Some("ok")]);
}
