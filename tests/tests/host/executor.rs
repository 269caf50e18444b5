//! The executor on the test-nodes fixture, through the real ABI: what runs, in which order,
//! caching across runs, progress and log events, node failures and panics, cancellation.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use node_abi::{LogLevel, NodeErrorKind};
use node_host::{CancelToken, Event, ExecError, Executor, ProblemKind};
use rand::{seq::SliceRandom, Rng};
use serde_json::{json, Map, Value as Json};

use super::util::{entries, graph, lines, registry, rng, run, run_with};

fn log_path(dir: &Path) -> String {
    dir.join("log.txt").display().to_string()
}

fn started(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::NodeStarted { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

/// A random DAG of `MakeNumber` leaves and `AddNumbers`, with shuffled ids and document
/// order, a `Collect` on one sum and a few nodes nothing needs: only what `Collect` needs
/// runs, each node after its inputs, and the result is the sum the test computes itself.
#[test]
fn runs_only_what_outputs_need_in_dependency_order() {
    let mut rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let log = log_path(dir.path());
    for _round in 0..5 {
        std::fs::remove_file(&log).ok();
        let leaves = rng.random_range(3..7usize);
        let adds = rng.random_range(8..20usize);
        let total = leaves + adds;
        let mut ids: Vec<String> = (0..total).map(|i| (i * 3 + 1).to_string()).collect();
        ids.shuffle(&mut rng);

        // Node k: a leaf with a distinct value, or the sum of two earlier nodes (distinct pairs,
        // so no two nodes share a cache key and all of them really run).
        let mut values: Vec<i64> = Vec::new();
        let mut inputs_of: Vec<Vec<usize>> = Vec::new();
        let mut docs: Vec<(String, Json)> = Vec::new();
        let mut pairs = HashSet::new();
        for k in 0..total {
            if k < leaves {
                let v = loop {
                    let v = rng.random_range(-1000..=1000i64);
                    if !values.contains(&v) {
                        break v;
                    }
                };
                values.push(v);
                inputs_of.push(vec![]);
                docs.push((
                    ids[k].clone(),
                    json!({"class_type": "MakeNumber", "inputs": {"value": v, "log": log}}),
                ));
            } else {
                let (a, b) = loop {
                    let pair = (rng.random_range(0..k), rng.random_range(0..k));
                    if pairs.insert(pair) {
                        break pair;
                    }
                };
                values.push(values[a] + values[b]);
                inputs_of.push(vec![a, b]);
                docs.push((
                    ids[k].clone(),
                    json!({"class_type": "AddNumbers", "inputs": {"a": [ids[a], 0], "b": [ids[b], 0], "log": log}}),
                ));
            }
        }
        let target = rng.random_range(leaves..total);
        docs.push((
            "out".into(),
            json!({"class_type": "Collect", "inputs": {"value": [ids[target], 0], "log": log}}),
        ));
        // A node that is not connected at all.
        docs.push((
            "lonely".into(),
            json!({"class_type": "MakeNumber", "inputs": {"value": 999_999, "log": log}}),
        ));
        docs.shuffle(&mut rng);
        let doc: Map<String, Json> = docs.into_iter().collect();

        let mut needed = HashSet::new();
        let mut stack = vec![target];
        while let Some(k) = stack.pop() {
            if needed.insert(k) {
                stack.extend(&inputs_of[k]);
            }
        }

        let mut executor = Executor::new(registry());
        let (result, events) = run(&mut executor, &graph(Json::Object(doc)));
        let report = result.unwrap_or_else(|e| panic!("{e}"));
        let order = started(&events);
        let expected: HashSet<String> = needed
            .iter()
            .map(|&k| ids[k].clone())
            .chain(["out".to_string()])
            .collect();
        assert_eq!(
            order.iter().cloned().collect::<HashSet<_>>(),
            expected,
            "exactly the needed nodes run"
        );
        assert_eq!(order.len(), expected.len(), "each once: {order:?}");
        assert_eq!(
            report.executed.iter().cloned().collect::<HashSet<_>>(),
            expected
        );
        assert!(report.cached.is_empty());
        let position: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        for &k in &needed {
            for &dep in &inputs_of[k] {
                assert!(
                    position[ids[dep].as_str()] < position[ids[k].as_str()],
                    "{} ran before its input {}",
                    ids[k],
                    ids[dep]
                );
            }
        }
        assert_eq!(order.last().map(String::as_str), Some("out"));
        let Some(Event::Plan { order: plan }) = events.first() else {
            panic!("the first event is the plan: {events:?}")
        };
        assert_eq!(plan, &order, "the plan is the order things ran in");

        let log_lines = lines(Path::new(&log));
        assert_eq!(log_lines.len(), expected.len(), "{log_lines:#?}");
        assert_eq!(
            log_lines.last().unwrap(),
            &format!("Collect {}", values[target])
        );
        assert!(
            !log_lines.iter().any(|l| l.contains("999999")),
            "the unconnected node ran: {log_lines:#?}"
        );
    }
}

/// `a`, `b` → `ab`; `ab`, `c` → `abc` → Collect; `d` unconnected.
fn caching_graph(log: &str, a: i64, b: i64, c: i64) -> Json {
    json!({
        "a": {"class_type": "MakeNumber", "inputs": {"value": a, "log": log}},
        "b": {"class_type": "MakeNumber", "inputs": {"value": b, "log": log}},
        "ab": {"class_type": "AddNumbers", "inputs": {"a": ["a", 0], "b": ["b", 0], "log": log}},
        "c": {"class_type": "MakeNumber", "inputs": {"value": c, "log": log}},
        "abc": {"class_type": "AddNumbers", "inputs": {"a": ["ab", 0], "b": ["c", 0], "log": log}},
        "out": {"class_type": "Collect", "inputs": {"value": ["abc", 0], "log": log}},
        "d": {"class_type": "MakeNumber", "inputs": {"value": 4242, "log": log}}
    })
}

#[test]
fn caching_reruns_only_the_changed_node_and_its_dependents() {
    let mut rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let log = log_path(dir.path());
    let (a, b, c) = (
        rng.random_range(-500..500i64),
        rng.random_range(500..1000i64),
        rng.random_range(1000..2000i64),
    );
    let c2 = c + rng.random_range(1..100i64);
    let mut executor = Executor::new(registry());
    let mut seen = 0;
    let mut step = |executor: &mut Executor, c: i64| {
        let (result, _) = run(executor, &graph(caching_graph(&log, a, b, c)));
        let report = result.unwrap_or_else(|e| panic!("{e}"));
        let all = lines(Path::new(&log));
        let new = all[seen..].to_vec();
        seen = all.len();
        (report, new)
    };

    let (report, ran) = step(&mut executor, c);
    assert_eq!(
        ran,
        [
            format!("MakeNumber {a}"),
            format!("MakeNumber {b}"),
            format!("AddNumbers {a} {b} {}", a + b),
            format!("MakeNumber {c}"),
            format!("AddNumbers {} {c} {}", a + b, a + b + c),
            format!("Collect {}", a + b + c),
        ]
    );
    assert_eq!(report.executed, ["a", "b", "ab", "c", "abc", "out"]);

    // Unchanged: everything upstream comes from the cache; the output node always runs.
    let (report, ran) = step(&mut executor, c);
    assert_eq!(ran, [format!("Collect {}", a + b + c)]);
    assert_eq!(report.executed, ["out"]);
    assert_eq!(report.cached, ["a", "b", "ab", "c", "abc"]);

    // One widget changed: that node and its dependents run, nothing else.
    let (report, ran) = step(&mut executor, c2);
    assert_eq!(
        ran,
        [
            format!("MakeNumber {c2}"),
            format!("AddNumbers {} {c2} {}", a + b, a + b + c2),
            format!("Collect {}", a + b + c2)
        ]
    );
    assert_eq!(report.executed, ["c", "abc", "out"]);
    assert_eq!(report.cached, ["a", "b", "ab"]);

    // Back to the first value: still cached from the first run.
    let (report, ran) = step(&mut executor, c);
    assert_eq!(ran, [format!("Collect {}", a + b + c)]);
    assert_eq!(report.executed, ["out"]);

    // A cleared cache (or a new executor) recomputes everything.
    executor.clear_cache();
    let (report, ran) = step(&mut executor, c);
    assert_eq!(ran.len(), 6, "{ran:?}");
    assert!(report.cached.is_empty());
    let mut fresh = Executor::new(registry());
    let (report, _) = step(&mut fresh, c2);
    assert_eq!(report.executed.len(), 6);
}

#[test]
fn progress_and_log_events_arrive_in_order() {
    let mut rng = rng();
    let steps = rng.random_range(5..40u64);
    let g = graph(json!({
        "count": {"class_type": "SlowCounter", "inputs": {"steps": steps, "step_ms": 0}},
        "out": {"class_type": "Collect", "inputs": {"value": ["count", 0]}}
    }));
    let mut executor = Executor::new(registry());
    let (result, events) = run(&mut executor, &g);
    result.unwrap_or_else(|e| panic!("{e}"));
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress {
                node,
                step,
                total,
                message,
            } => {
                assert_eq!(node, "count");
                assert_eq!(message, &format!("step {step}"));
                Some((*step, *total))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        progress,
        (1..=steps).map(|s| (s, steps)).collect::<Vec<_>>()
    );
    let index = |pred: &dyn Fn(&Event) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{events:#?}"))
    };
    let start = index(
        &|e| matches!(e, Event::NodeStarted { node, class_type } if node == "count" && class_type == "SlowCounter"),
    );
    let first = index(&|e| matches!(e, Event::Progress { .. }));
    let log = index(
        &|e| matches!(e, Event::Log { node, level: LogLevel::Info, message } if node == "count" && *message == format!("counted {steps} steps")),
    );
    let finish = index(&|e| matches!(e, Event::NodeFinished { node, .. } if node == "count"));
    assert!(start < first && first < log && log < finish, "{events:#?}");
}

#[test]
fn a_panicking_node_is_an_error_for_that_node_and_the_host_goes_on() {
    let mut rng = rng();
    let message = format!("deliberate panic #{}", rng.random::<u32>());
    let mut executor = Executor::new(registry());
    let bad = graph(json!({
        "1": {"class_type": "MakeNumber", "inputs": {"value": 3}},
        "2": {"class_type": "Panic", "inputs": {"value": ["1", 0], "message": message}},
        "3": {"class_type": "Collect", "inputs": {"value": ["2", 0]}}
    }));
    for _ in 0..2 {
        let (result, events) = run(&mut executor, &bad);
        match result {
            Err(ExecError::Node {
                node,
                class_type,
                error,
            }) => {
                assert_eq!((node.as_str(), class_type.as_str()), ("2", "Panic"));
                assert_eq!(error.kind, NodeErrorKind::Panic);
                assert!(error.message.contains(&message), "{error}");
            }
            other => panic!("expected a node error, got {other:?}"),
        }
        assert!(
            !started(&events).contains(&"3".to_string()),
            "nothing runs after the failure"
        );
    }
    let err = run(&mut executor, &bad).0.unwrap_err().to_string();
    assert!(
        err.contains("node 2 (Panic)") && err.contains(&message),
        "{err}"
    );

    // The same executor (and plugin) still runs graphs.
    let dir = tempfile::tempdir().unwrap();
    let log = log_path(dir.path());
    let (x, y) = (
        rng.random_range(-1000..1000i64),
        rng.random_range(-1000..1000i64),
    );
    let good = graph(json!({
        "1": {"class_type": "MakeNumber", "inputs": {"value": x}},
        "2": {"class_type": "MakeNumber", "inputs": {"value": y}},
        "3": {"class_type": "AddNumbers", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "Collect", "inputs": {"value": ["3", 0], "log": log}}
    }));
    run(&mut executor, &good)
        .0
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lines(Path::new(&log)), [format!("Collect {}", x + y)]);
}

#[test]
fn a_failing_node_names_itself_and_the_input() {
    let mut executor = Executor::new(registry());
    let g = graph(json!({
        "f": {"class_type": "Fail", "inputs": {"message": "the reason, in words"}},
        "o": {"class_type": "Collect", "inputs": {"value": ["f", 0]}}
    }));
    let err = run(&mut executor, &g).0.unwrap_err();
    let ExecError::Node {
        node,
        class_type,
        error,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (node.as_str(), class_type.as_str(), error.kind),
        ("f", "Fail", NodeErrorKind::InvalidInput)
    );
    assert_eq!(
        error.input.as_ref().map(|s| s.as_str()).into_option(),
        Some("message")
    );
    let text = err.to_string();
    assert!(
        text.contains("node f (Fail)")
            && text.contains("input 'message'")
            && text.contains("the reason, in words"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn an_output_of_the_wrong_type_is_caught() {
    let mut executor = Executor::new(registry());
    let g = graph(json!({
        "w": {"class_type": "WrongOutput", "inputs": {}},
        "o": {"class_type": "Collect", "inputs": {"value": ["w", 0]}}
    }));
    let err = run(&mut executor, &g).0.unwrap_err();
    let ExecError::Node { node, error, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((node.as_str(), error.kind), ("w", NodeErrorKind::Internal));
    assert!(
        error.message.contains("INT") && error.message.contains("STRING"),
        "{error}"
    );
}

/// Linked values are only known at run time: the executor holds them to the input's range
/// and choices as validation holds literals, before the node runs.
#[test]
fn linked_values_honour_ranges_and_choices() {
    let mut rng = rng();
    let dir = tempfile::tempdir().unwrap();
    let log = log_path(dir.path());
    let mut executor = Executor::new(registry());

    // 1e6 + r steps: above SlowCounter's maximum of 1e6.
    let r = rng.random_range(1..1_000_000i64);
    let too_many = graph(json!({
        "1": {"class_type": "MakeNumber", "inputs": {"value": 1_000_000}},
        "2": {"class_type": "MakeNumber", "inputs": {"value": r}},
        "3": {"class_type": "AddNumbers", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "SlowCounter", "inputs": {"steps": ["3", 0], "step_ms": 0, "log": log}},
        "5": {"class_type": "Collect", "inputs": {"value": ["4", 0]}}
    }));
    let err = run(&mut executor, &too_many).0.unwrap_err();
    let ExecError::Node {
        node,
        class_type,
        error,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (node.as_str(), class_type.as_str(), error.kind),
        ("4", "SlowCounter", NodeErrorKind::InvalidInput)
    );
    assert_eq!(
        error.input.as_ref().map(|s| s.as_str()).into_option(),
        Some("steps")
    );
    assert!(
        error.message.contains(&format!("{}", 1_000_000 + r))
            && error.message.contains("maximum")
            && error.message.contains("node 3"),
        "{err}"
    );

    // A string that is not one of the choices.
    let word = format!("c{}", rng.random::<u16>());
    let bad_choice = |which: &str| {
        graph(json!({
            "t": {"class_type": "MakeText", "inputs": {"text": which}},
            "1": {"class_type": "MakeNumber", "inputs": {"value": 1}},
            "2": {"class_type": "MakeNumber", "inputs": {"value": 2}},
            "p": {"class_type": "Pick", "inputs": {"which": ["t", 0], "a": ["1", 0], "b": ["2", 0], "log": log}},
            "o": {"class_type": "Collect", "inputs": {"value": ["p", 0], "log": log}}
        }))
    };
    let err = run(&mut executor, &bad_choice(&word)).0.unwrap_err();
    let ExecError::Node { node, error, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (
            node.as_str(),
            error.input.as_ref().map(|s| s.as_str()).into_option()
        ),
        ("p", Some("which"))
    );
    assert!(
        error.message.contains(&word) && error.message.contains("a, b"),
        "{err}"
    );
    assert_eq!(
        lines(Path::new(&log)),
        Vec::<String>::new(),
        "neither SlowCounter nor Pick ran"
    );

    // A good choice over a link goes through.
    run(&mut executor, &bad_choice("b"))
        .0
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lines(Path::new(&log)), ["Pick b", "Collect 2"]);
}

#[test]
fn an_invalid_graph_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_path(dir.path());
    let mut executor = Executor::new(registry());
    let g = graph(json!({
        "1": {"class_type": "MakeNumber", "inputs": {"value": 5_000_000, "log": log}},
        "2": {"class_type": "Collect", "inputs": {"value": ["1", 0], "log": log}},
        "3": {"class_type": "Collect", "inputs": {"value": ["9", 0]}}
    }));
    let err = run(&mut executor, &g).0.unwrap_err();
    let ExecError::Invalid(problems) = &err else {
        panic!("{err:?}")
    };
    let kinds: Vec<ProblemKind> = problems.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [ProblemKind::OutOfRange, ProblemKind::MissingNode],
        "{err}"
    );
    assert!(lines(Path::new(&log)).is_empty());
}

/// `SlowCounter` → `WriteText` in `folder`.
fn slow_graph(folder: &Path, steps: u64, step_ms: u64, chunks: u64, chunk_ms: u64) -> Json {
    json!({
        "count": {"class_type": "SlowCounter", "inputs": {"steps": steps, "step_ms": step_ms}},
        "write": {"class_type": "WriteText", "inputs": {
            "value": ["count", 0], "folder": folder.display().to_string(), "name": "result.txt", "chunks": chunks, "chunk_ms": chunk_ms
        }}
    })
}

/// Runs `g`, cancelling from another thread shortly after the first progress event of
/// `node`; returns the result, the events and how long the run took to stop after cancel.
fn run_and_cancel(
    g: &Json,
    node: &str,
) -> (
    Result<node_host::RunReport, ExecError>,
    Vec<Event>,
    Duration,
) {
    let mut executor = Executor::new(registry());
    let cancel = CancelToken::new();
    let (tx, rx) = mpsc::channel::<()>();
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the node reported progress");
            std::thread::sleep(Duration::from_millis(30));
            cancel.cancel();
            Instant::now()
        })
    };
    let node = node.to_string();
    let (result, events) = run_with(&mut executor, &graph(g.clone()), &cancel, &|e| {
        if matches!(e, Event::Progress { node: n, .. } if *n == node) {
            let _ = tx.send(());
        }
    });
    let stopped = Instant::now();
    drop(tx);
    let cancelled_at = canceller.join().unwrap();
    (
        result,
        events,
        stopped.saturating_duration_since(cancelled_at),
    )
}

#[test]
fn cancelling_a_slow_node_stops_promptly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // 10 000 steps of 2 ms: 20 s if cancellation did not work.
    let (result, events, latency) =
        run_and_cancel(&slow_graph(dir.path(), 10_000, 2, 1, 0), "count");
    match result {
        Err(ExecError::Cancelled { node }) => assert_eq!(node, "count"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(
        latency < Duration::from_secs(2),
        "took {latency:?} to stop after cancel (20 s if not cancelled)"
    );
    let last_step = events
        .iter()
        .filter_map(|e| {
            if let Event::Progress { step, .. } = e {
                Some(*step)
            } else {
                None
            }
        })
        .max()
        .unwrap();
    assert!(last_step < 10_000, "ran to the end");
    assert!(
        !started(&events).contains(&"write".to_string()),
        "the writer must not start"
    );
    assert_eq!(
        entries(dir.path()),
        Vec::<String>::new(),
        "no output, no temporary file"
    );
}

#[test]
fn cancelling_an_output_node_mid_write_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let (result, events, latency) =
        run_and_cancel(&slow_graph(dir.path(), 1, 0, 10_000, 2), "write");
    match result {
        Err(ExecError::Cancelled { node }) => assert_eq!(node, "write"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(
        latency < Duration::from_secs(2),
        "took {latency:?} to stop after cancel (20 s if not cancelled)"
    );
    assert!(started(&events).contains(&"write".to_string()));
    assert_eq!(
        entries(dir.path()),
        Vec::<String>::new(),
        "no output, no temporary file"
    );
}

#[test]
fn an_uncancelled_write_completes_and_a_cancelled_token_runs_nothing() {
    let mut rng = rng();
    let steps = rng.random_range(2..30u64);
    let dir = tempfile::tempdir().unwrap();
    let g = graph(slow_graph(dir.path(), steps, 0, 3, 0));
    let mut executor = Executor::new(registry());
    run(&mut executor, &g).0.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries(dir.path()), ["result.txt"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("result.txt")).unwrap(),
        format!("value={steps}\n").repeat(3)
    );
    std::fs::remove_file(dir.path().join("result.txt")).unwrap();

    let cancel = CancelToken::new();
    cancel.cancel();
    let (result, events) = run_with(&mut executor, &g, &cancel, &|_| {});
    assert!(
        matches!(result, Err(ExecError::Cancelled { .. })),
        "{result:?}"
    );
    assert!(started(&events).is_empty(), "{events:?}");
    assert_eq!(entries(dir.path()), Vec::<String>::new());
}
