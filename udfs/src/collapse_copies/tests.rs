//! Unit tests of `collapse_copies`: agreeing and disagreeing copies, merged partial states,
//! a skipped partial step with an early emit, filtered rows and the form without GROUP BY.

use super::*;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringViewArray, StructArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Int64Type, TimeUnit};
use datafusion::logical_expr::EmitTo;

fn types() -> Types {
    Types {
        arrival: DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        copy: DataType::Struct(vec![Field::new("v", DataType::Utf8View, true)].into()),
    }
}

/// (payload, arrival, value) rows as the function's three arguments.
fn args(rows: &[(i64, i64, &str)]) -> Vec<ArrayRef> {
    let copy = StructArray::new(
        vec![Field::new("v", DataType::Utf8View, true)].into(),
        vec![Arc::new(StringViewArray::from(
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        )) as ArrayRef],
        None,
    );
    vec![
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(copy),
    ]
}

/// Per group: (copies, first arrival, agreeing copy's value or None, sorted variants as
/// (value, copies, first arrival) with equal values summed).
type Summary = (i64, i64, Option<String>, Vec<(String, i64, i64)>);

fn summarize(out: &ArrayRef) -> Vec<Summary> {
    let s = out.as_struct();
    let copy = s.column(0).as_struct().column(0).as_string_view().clone();
    let copies = s.column(1).as_primitive::<Int64Type>().clone();
    let first = cast(s.column(2), &DataType::Int64).unwrap();
    let first = first.as_primitive::<Int64Type>().clone();
    let variants = s.column(3).as_list::<i32>().clone();
    (0..s.len())
        .map(|g| {
            let mut vs: Vec<(String, i64, i64)> = Vec::new();
            if variants.is_valid(g) {
                let l = variants.value(g);
                let l = l.as_struct();
                let val = l.column(0).as_struct().column(0).as_string_view().clone();
                let c = l.column(1).as_primitive::<Int64Type>().clone();
                let f = cast(l.column(2), &DataType::Int64).unwrap();
                let f = f.as_primitive::<Int64Type>().clone();
                for i in 0..l.len() {
                    let v = val.value(i).to_string();
                    match vs.iter_mut().find(|e| e.0 == v) {
                        Some(e) => {
                            e.1 += c.value(i);
                            e.2 = e.2.min(f.value(i));
                        }
                        None => vs.push((v, c.value(i), f.value(i))),
                    }
                }
                vs.sort();
            }
            let agreed = (!variants.is_valid(g)).then(|| copy.value(g).to_string());
            (copies.value(g), first.value(g), agreed, vs)
        })
        .collect()
}

/// Rows of three transactions: 0 agrees (3 copies), 1 disagrees (a, a, b), 2 has one copy.
fn rows() -> Vec<(usize, (i64, i64, &'static str))> {
    vec![
        (0, (7, 30, "x")),
        (1, (1, 50, "a")),
        (0, (7, 10, "x")),
        (2, (9, 5, "only")),
        (1, (2, 20, "b")),
        (0, (7, 40, "x")),
        (1, (1, 45, "a")),
    ]
}

fn expected() -> Vec<Summary> {
    vec![
        (3, 10, Some("x".into()), vec![]),
        (3, 20, None, vec![("a".into(), 2, 45), ("b".into(), 1, 20)]),
        (1, 5, Some("only".into()), vec![]),
    ]
}

#[test]
fn counts_agreeing_copies_and_keeps_every_variant_of_disagreeing_ones() {
    let mut acc = CollapseGroups::new(types());
    let rows = rows();
    // Two batches; group numbers in first-seen order, as DataFusion assigns them.
    for part in [&rows[..4], &rows[4..]] {
        let groups: Vec<usize> = part.iter().map(|r| r.0).collect();
        let data: Vec<_> = part.iter().map(|r| r.1).collect();
        acc.update_batch(&args(&data), &groups, None, 3).unwrap();
    }
    assert_eq!(summarize(&acc.evaluate(EmitTo::All).unwrap()), expected());
}

#[test]
fn merged_partial_states_give_the_same_result_whichever_copy_each_saw_first() {
    // Split the rows between two partial accumulators (even and odd rows): the first sees
    // payload "b" of transaction 1 first, the second only "a". Merge their states.
    let rows = rows();
    let mut final_acc = CollapseGroups::new(types());
    for keep in [0, 1] {
        let mut partial = CollapseGroups::new(types());
        let mine: Vec<_> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == keep)
            .map(|(_, r)| *r)
            .collect();
        // Local group numbers follow first appearance in this partial.
        let mut local: Vec<usize> = Vec::new();
        let groups: Vec<usize> = mine
            .iter()
            .map(|r| match local.iter().position(|&g| g == r.0) {
                Some(p) => p,
                None => {
                    local.push(r.0);
                    local.len() - 1
                }
            })
            .collect();
        let data: Vec<_> = mine.iter().map(|r| r.1).collect();
        partial
            .update_batch(&args(&data), &groups, None, local.len())
            .unwrap();
        let state = partial.state(EmitTo::All).unwrap();
        // Each state row is one local group; `local` maps it to the final group number.
        final_acc.merge_batch(&state, &local, 3).unwrap();
    }
    assert_eq!(
        summarize(&final_acc.evaluate(EmitTo::All).unwrap()),
        expected()
    );
}

#[test]
fn skipped_partial_aggregation_and_a_partial_emit_keep_every_group_whole() {
    // convert_to_state (the partial step skipped) feeds the final step row by row; the
    // final step emits its first group early (as a spill merge does), then the rest.
    let rows = rows();
    let helper = CollapseGroups::new(types());
    let mut acc = CollapseGroups::new(types());
    let data: Vec<_> = rows.iter().map(|r| r.1).collect();
    let state = helper.convert_to_state(&args(&data), None).unwrap();
    let groups: Vec<usize> = rows.iter().map(|r| r.0).collect();
    acc.merge_batch(&state, &groups, 3).unwrap();
    let first = summarize(&acc.evaluate(EmitTo::First(1)).unwrap());
    // Groups 1 and 2 are now 0 and 1; another copy of transaction 1 ("b", earlier).
    let more = helper
        .convert_to_state(&args(&[(2, 15, "b")]), None)
        .unwrap();
    acc.merge_batch(&more, &[0], 2).unwrap();
    let rest = summarize(&acc.evaluate(EmitTo::All).unwrap());
    let mut want = expected();
    want[1].0 = 4;
    want[1].1 = 15;
    want[1].3[1] = ("b".into(), 2, 15);
    assert_eq!(first, want[..1].to_vec());
    assert_eq!(rest, want[1..].to_vec());
}

#[test]
fn a_filtered_row_counts_for_nothing() {
    let helper = CollapseGroups::new(types());
    let mut acc = CollapseGroups::new(types());
    let filter = BooleanArray::from(vec![false, true]);
    let state = helper
        .convert_to_state(&args(&[(1, 1, "skip"), (2, 2, "keep")]), Some(&filter))
        .unwrap();
    acc.merge_batch(&state, &[0, 0], 1).unwrap();
    let got = summarize(&acc.evaluate(EmitTo::All).unwrap());
    assert_eq!(got, vec![(1, 2, Some("keep".into()), vec![])]);
}

#[test]
fn without_group_by_the_one_group_survives_repeated_evaluation() {
    let mut acc = OneGroup(CollapseGroups::new(types()));
    acc.update_batch(&args(&[(1, 5, "a"), (2, 3, "b")]))
        .unwrap();
    let once = acc.evaluate().unwrap();
    let twice = acc.evaluate().unwrap();
    assert_eq!(once, twice);
    let out = summarize(&once.to_array().unwrap());
    assert_eq!(
        out,
        vec![(2, 3, None, vec![("a".into(), 1, 5), ("b".into(), 1, 3)])]
    );
}
