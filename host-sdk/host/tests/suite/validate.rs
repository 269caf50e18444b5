//! Validation: one test per problem kind, each checking that exactly that problem is
//! reported, naming node id, class and input; and a graph with many problems reporting all
//! of them in one pass.

use node_host::{validate::validate, Problem, ProblemKind};
use serde_json::{json, Value as Json};

use super::fixture::{graph, registry};

/// A valid graph: Clip → Sink.video, Num → Sink.gain (INT feeds FLOAT), plus every widget.
fn base() -> Json {
    json!({
        "1": {"class_type": "Clip", "inputs": {"frames": 12}},
        "2": {"class_type": "Num", "inputs": {"value": -7}},
        "3": {"class_type": "Text", "inputs": {"text": "hello"}},
        "4": {"class_type": "Pass", "inputs": {"x": ["2", 0]}},
        "9": {"class_type": "Sink", "inputs": {
            "video": ["1", 0], "count": 3, "gain": ["4", 0], "mode": "slow", "loop": true, "label": "take 1", "offset": -123456789
        }, "_meta": {"title": "out"}}
    })
}

/// `base()` with input `input` of node `node` set to `value` (`null` removes it).
fn with(node: &str, input: &str, value: Json) -> Json {
    let mut doc = base();
    let inputs = doc[node]["inputs"].as_object_mut().unwrap();
    if value.is_null() {
        inputs.remove(input);
    } else {
        inputs.insert(input.into(), value);
    }
    doc
}

fn problems(doc: Json) -> Vec<Problem> {
    validate(&graph(doc), &registry())
}

/// Asserts exactly one problem, of `kind`, on node/class/input, whose text mentions each of
/// `fragments`; returns it.
#[track_caller]
fn only(
    doc: Json,
    kind: ProblemKind,
    node: &str,
    class: &str,
    input: Option<&str>,
    fragments: &[&str],
) -> Problem {
    let found = problems(doc.clone());
    assert_eq!(
        found.len(),
        1,
        "expected one problem for {doc}, got {found:#?}"
    );
    let p = found.into_iter().next().unwrap();
    assert_eq!(p.kind, kind, "{p}");
    assert_eq!(p.node.as_deref(), Some(node), "{p}");
    assert_eq!(p.class_type.as_deref(), Some(class), "{p}");
    assert_eq!(p.input.as_deref(), input, "{p}");
    let text = p.to_string();
    assert!(
        text.starts_with(&format!("node {node} ({class})")),
        "{text}"
    );
    if let Some(input) = input {
        assert!(text.contains(&format!("input '{input}'")), "{text}");
    }
    for f in fragments {
        assert!(text.contains(f), "{text:?} should mention {f:?}");
    }
    assert!(!text.contains('\n'), "one line: {text}");
    p
}

#[test]
fn the_base_graph_is_valid() {
    assert_eq!(problems(base()), vec![]);
    // Defaults fill in every optional or defaulted input.
    let minimal = json!({
        "1": {"class_type": "Clip"},
        "9": {"class_type": "Sink", "inputs": {"video": ["1", 0], "count": 10}}
    });
    assert_eq!(problems(minimal), vec![]);
}

#[test]
fn unknown_class() {
    let mut doc = base();
    doc["5"] = json!({"class_type": "Teleport", "inputs": {"speed": 3}});
    only(
        doc,
        ProblemKind::UnknownClass,
        "5",
        "Teleport",
        None,
        &["Teleport"],
    );
}

#[test]
fn unknown_input() {
    only(
        with("1", "frame", json!(3)),
        ProblemKind::UnknownInput,
        "1",
        "Clip",
        Some("frame"),
        &["frames"],
    );
}

#[test]
fn missing_required_input() {
    only(
        with("9", "count", Json::Null),
        ProblemKind::MissingInput,
        "9",
        "Sink",
        Some("count"),
        &["INT"],
    );
    only(
        with("9", "video", Json::Null),
        ProblemKind::MissingInput,
        "9",
        "Sink",
        Some("video"),
        &["VIDEO"],
    );
    only(
        with("4", "x", Json::Null),
        ProblemKind::MissingInput,
        "4",
        "Pass",
        Some("x"),
        &[],
    );
}

#[test]
fn wrong_link_type() {
    only(
        with("9", "video", json!(["2", 0])),
        ProblemKind::WrongType,
        "9",
        "Sink",
        Some("video"),
        &["VIDEO", "INT", "node 2"],
    );
    // FLOAT does not feed INT, STRING does not feed BOOLEAN.
    only(
        with("9", "count", json!(["3", 0])),
        ProblemKind::WrongType,
        "9",
        "Sink",
        Some("count"),
        &["STRING"],
    );
    only(
        with("9", "loop", json!(["3", 0])),
        ProblemKind::WrongType,
        "9",
        "Sink",
        Some("loop"),
        &["BOOLEAN"],
    );
}

#[test]
fn a_literal_for_a_link_only_input() {
    only(
        with("9", "video", json!("clip.gif")),
        ProblemKind::WrongType,
        "9",
        "Sink",
        Some("video"),
        &["link"],
    );
    only(
        with("4", "x", json!(5)),
        ProblemKind::WrongType,
        "4",
        "Pass",
        Some("x"),
        &["link"],
    );
}

#[test]
fn a_link_for_a_constant_only_input() {
    only(
        with("9", "label", json!(["3", 0])),
        ProblemKind::WrongType,
        "9",
        "Sink",
        Some("label"),
        &["constant"],
    );
}

#[test]
fn a_literal_of_the_wrong_type() {
    for (input, value) in [
        ("count", json!("three")),
        ("count", json!(true)),
        ("gain", json!("1.0")),
        ("loop", json!(1)),
        ("mode", json!(2)),
        ("label", json!(7)),
    ] {
        only(
            with("9", input, value),
            ProblemKind::WrongType,
            "9",
            "Sink",
            Some(input),
            &["expected"],
        );
    }
}

#[test]
fn out_of_range_values() {
    // A little variety between runs in how far out of range the values are.
    let r = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as i64
        % 1000;
    let cases = [
        ("count", json!(0), "minimum"),
        ("count", json!(-1 - r), "minimum"),
        ("count", json!(11 + r), "maximum"),
        ("count", json!(i64::MAX), "maximum"),
        ("count", json!(i64::MIN), "minimum"),
        ("gain", json!(2.000001), "maximum"),
        ("gain", json!(-1e-9), "minimum"),
        ("gain", json!(1e300), "maximum"),
        ("gain", json!(-1e300), "minimum"),
        ("count", json!(1e300), "integer"),
        ("count", json!(-1e300), "integer"),
        ("count", json!(2.5), "integer"),
        ("offset", json!(1e300), "integer"),
        ("offset", json!(0.1), "integer"),
        ("offset", json!(18446744073709551615u64), "integer"),
    ];
    for (input, value, fragment) in cases {
        only(
            with("9", input, value),
            ProblemKind::OutOfRange,
            "9",
            "Sink",
            Some(input),
            &[fragment],
        );
    }
    // The edges of the range and huge values without a range are fine.
    for (input, value) in [
        ("count", json!(1)),
        ("count", json!(10)),
        ("count", json!(4.0)),
        ("gain", json!(0)),
        ("gain", json!(2)),
        ("offset", json!(i64::MAX)),
        ("offset", json!(i64::MIN)),
        ("count", json!(1 + r % 10)),
    ] {
        assert_eq!(
            problems(with("9", input, value.clone())),
            vec![],
            "{input} = {value}"
        );
    }
}

#[test]
fn a_bad_choice_lists_the_choices() {
    only(
        with("9", "mode", json!("medium")),
        ProblemKind::OutOfRange,
        "9",
        "Sink",
        Some("mode"),
        &["medium", "fast", "slow"],
    );
    only(
        with("9", "mode", json!("Fast")),
        ProblemKind::OutOfRange,
        "9",
        "Sink",
        Some("mode"),
        &["Fast"],
    );
}

#[test]
fn a_link_to_a_missing_node() {
    only(
        with("9", "video", json!(["42", 0])),
        ProblemKind::MissingNode,
        "9",
        "Sink",
        Some("video"),
        &["42"],
    );
}

#[test]
fn a_link_to_a_missing_output_slot() {
    only(
        with("9", "video", json!(["1", 1])),
        ProblemKind::MissingSlot,
        "9",
        "Sink",
        Some("video"),
        &["output 1", "node 1", "1 output"],
    );
    only(
        with("9", "gain", json!(["4", 7])),
        ProblemKind::MissingSlot,
        "9",
        "Sink",
        Some("gain"),
        &["output 7"],
    );
}

#[test]
fn a_two_node_cycle() {
    let mut doc = base();
    doc["5"] = json!({"class_type": "Pass", "inputs": {"x": ["6", 0]}});
    doc["6"] = json!({"class_type": "Pass", "inputs": {"x": ["5", 0]}});
    let found = problems(doc);
    assert_eq!(found.len(), 1, "{found:#?}");
    let p = &found[0];
    assert_eq!(p.kind, ProblemKind::Cycle);
    assert!(matches!(p.node.as_deref(), Some("5" | "6")), "{p}");
    assert_eq!(p.class_type.as_deref(), Some("Pass"));
    assert!(
        p.message.contains("5 -> 6 -> 5") || p.message.contains("6 -> 5 -> 6"),
        "{p}"
    );
}

#[test]
fn a_self_loop() {
    let mut doc = base();
    doc["4"]["inputs"]["x"] = json!(["4", 0]);
    only(doc, ProblemKind::Cycle, "4", "Pass", None, &["4 -> 4"]);
}

#[test]
fn a_long_cycle_through_the_output_path_is_found_once() {
    // 2 -> 4 -> 5 -> ... -> 2, long enough that a recursive search would be tested.
    let mut doc = base();
    let n = 2000;
    for i in 0..n {
        let next = if i + 1 == n {
            "2".to_string()
        } else {
            format!("c{}", i + 1)
        };
        doc[format!("c{i}")] = json!({"class_type": "Pass", "inputs": {"x": [next, 0]}});
    }
    doc["2"] = json!({"class_type": "Pass", "inputs": {"x": ["c0", 0]}});
    let found = problems(doc);
    assert_eq!(
        found
            .iter()
            .filter(|p| p.kind == ProblemKind::Cycle)
            .count(),
        1,
        "{found:#?}"
    );
    assert_eq!(found.len(), 1, "{found:#?}");
}

#[test]
fn no_output_node() {
    let doc = json!({"1": {"class_type": "Num", "inputs": {"value": 5}}, "2": {"class_type": "Pass", "inputs": {"x": ["1", 0]}}});
    let found = problems(doc);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, ProblemKind::NoOutputNode);
    assert_eq!(found[0].node, None);
    assert!(found[0].to_string().starts_with("graph: "), "{}", found[0]);
    let empty = problems(json!({}));
    assert_eq!(empty.len(), 1, "{empty:#?}");
    assert_eq!(empty[0].kind, ProblemKind::NoOutputNode);
}

#[test]
fn many_problems_are_all_reported_in_one_pass() {
    let doc = json!({
        "1": {"class_type": "Clip", "inputs": {"frames": 0, "fps": 24}},
        "2": {"class_type": "Num", "inputs": {"value": 1e300}},
        "3": {"class_type": "Teleport", "inputs": {}},
        "4": {"class_type": "Pass", "inputs": {"x": ["5", 0]}},
        "5": {"class_type": "Pass", "inputs": {"x": ["4", 0]}},
        "6": {"class_type": "Pass", "inputs": {"x": ["3", 0]}},
        "9": {"class_type": "Sink", "inputs": {
            "video": ["2", 0], "gain": ["1", 3], "mode": "medium", "loop": "yes", "label": ["missing", 0]
        }},
        "10": {"class_type": "Sink", "inputs": {"video": "a.gif", "count": 99}}
    });
    let found = problems(doc);
    let mut got: Vec<(ProblemKind, Option<&str>, Option<&str>)> = found
        .iter()
        .map(|p| (p.kind, p.node.as_deref(), p.input.as_deref()))
        .collect();
    use ProblemKind::*;
    let mut want = vec![
        (OutOfRange, Some("1"), Some("frames")),
        (UnknownInput, Some("1"), Some("fps")),
        (OutOfRange, Some("2"), Some("value")),
        (UnknownClass, Some("3"), None),
        (WrongType, Some("9"), Some("video")),
        (MissingSlot, Some("9"), Some("gain")),
        (OutOfRange, Some("9"), Some("mode")),
        (WrongType, Some("9"), Some("loop")),
        (WrongType, Some("9"), Some("label")),
        (MissingInput, Some("9"), Some("count")),
        (WrongType, Some("10"), Some("video")),
        (OutOfRange, Some("10"), Some("count")),
    ];
    // The cycle is reported once, on whichever of its nodes the search met first.
    let cycle: Vec<_> = got
        .iter()
        .filter(|(k, _, _)| *k == Cycle)
        .cloned()
        .collect();
    assert_eq!(cycle.len(), 1, "{found:#?}");
    want.push(cycle[0]);
    got.sort_by_key(|(k, n, i)| (format!("{k:?}"), *n, *i));
    want.sort_by_key(|(k, n, i)| (format!("{k:?}"), *n, *i));
    assert_eq!(got, want, "{found:#?}");
    for p in &found {
        if let (Some(node), Some(class)) = (&p.node, &p.class_type) {
            assert!(
                p.to_string().starts_with(&format!("node {node} ({class})")),
                "{p}"
            );
        }
        if let Some(input) = &p.input {
            assert!(p.to_string().contains(&format!("input '{input}'")), "{p}");
        }
    }
}
