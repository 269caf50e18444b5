//! Graph documents: parse errors that name the file and node, and load → save stability on
//! random documents (unknown keys included).

use std::path::Path;

use node_host::{Graph, GraphError, InputValue};
use serde_json::{json, Map, Value as Json};

/// A small xorshift generator, seeded from the clock; the seed is printed so a failure can
/// be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("seed {seed}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn finite_f64(&mut self) -> f64 {
        loop {
            let f = f64::from_bits(self.next());
            if f.is_finite() {
                return f;
            }
        }
    }
    fn string(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "9",
            " ",
            "\"",
            "\\",
            "\n",
            "\t",
            "é",
            "ノード",
            "🎞",
            "/",
            "{",
            "]",
            "_",
        ];
        (0..self.below(12)).map(|_| *self.pick(PIECES)).collect()
    }
}

fn random_literal(rng: &mut Rng) -> Json {
    match rng.below(7) {
        0 => json!(rng.next() as i64),
        1 => json!(rng.below(2000) as i64 - 1000),
        2 => json!(rng.finite_f64()),
        3 => json!((rng.below(10_000) as f64) / 64.0 - 50.0),
        4 => json!(rng.below(2) == 0),
        5 => Json::Null,
        _ => json!(rng.string()),
    }
}

fn random_extra(rng: &mut Rng) -> Json {
    json!({
        "title": rng.string(),
        "pos": [rng.below(4000), rng.finite_f64()],
        "nested": {"deep": [random_literal(rng), {"x": random_literal(rng)}]},
    })
}

/// A random graph document: nodes in random order with random ids, literal and link
/// inputs, `_meta` and other unknown node keys, and top-level `_` metadata.
fn random_document(rng: &mut Rng) -> Json {
    let count = 1 + rng.below(12) as usize;
    let ids: Vec<String> = (0..count)
        .map(|i| {
            format!(
                "{}{}",
                rng.pick(&["", "n", "node-", "ノ"]),
                i * 7 + rng.below(5) as usize
            )
        })
        .collect();
    let mut top = Map::new();
    if rng.below(2) == 0 {
        top.insert(
            "_graph".into(),
            json!({"format_version": 1, "layout": random_extra(rng)}),
        );
    }
    for id in &ids {
        let mut inputs = Map::new();
        for k in 0..rng.below(6) {
            let name = format!("{}{k}", rng.pick(&["in", "value", "入力", "x"]));
            let value = if rng.below(3) == 0 {
                json!([rng.pick(&ids).clone(), rng.below(4)])
            } else {
                random_literal(rng)
            };
            inputs.insert(name, value);
        }
        let mut entry = Map::new();
        if rng.below(2) == 0 {
            entry.insert("_meta".into(), random_extra(rng));
        }
        entry.insert(
            "class_type".into(),
            json!(rng
                .pick(&["Num", "LoadReference", "Some Class", "名前"])
                .to_string()),
        );
        entry.insert("inputs".into(), Json::Object(inputs));
        if rng.below(3) == 0 {
            entry.insert("is_changed".into(), random_literal(rng));
        }
        top.insert(id.clone(), Json::Object(entry));
    }
    if rng.below(2) == 0 {
        top.insert("_editor".into(), random_extra(rng));
    }
    Json::Object(top)
}

fn origin() -> &'static Path {
    Path::new("random.json")
}

#[test]
fn load_save_round_trip_is_stable_and_loses_nothing() {
    let mut rng = Rng::new();
    for _ in 0..200 {
        let doc = random_document(&mut rng);
        let graph =
            Graph::from_json(doc.clone(), origin()).unwrap_or_else(|e| panic!("{e}\n{doc:#}"));
        // Nothing lost: the document comes back (object key order aside).
        assert_eq!(graph.to_json(), doc);
        let ids: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !k.starts_with('_'))
            .map(String::as_str)
            .collect();
        assert_eq!(
            graph
                .nodes
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>(),
            ids,
            "document order kept"
        );
        let once = graph.to_string_pretty();
        let reloaded = Graph::parse(&once, origin()).unwrap();
        assert_eq!(reloaded, graph);
        assert_eq!(
            reloaded.to_string_pretty(),
            once,
            "save(load(x)) must equal save(load(save(load(x))))"
        );
    }
}

#[test]
fn float_literals_survive_a_round_trip_bit_for_bit() {
    let mut rng = Rng::new();
    for _ in 0..20_000 {
        let f = rng.finite_f64();
        let graph = Graph::from_json(
            json!({"1": {"class_type": "Num", "inputs": {"x": f}}}),
            origin(),
        )
        .unwrap();
        let back = Graph::parse(&graph.to_string_pretty(), origin()).unwrap();
        let Some(InputValue::Literal(j)) = back.node("1").unwrap().input("x") else {
            panic!("literal expected")
        };
        assert_eq!(
            j.as_f64().map(f64::to_bits),
            Some(f.to_bits()),
            "{f:e} came back as {j}"
        );
    }
}

#[test]
fn unknown_keys_are_kept_where_they_were() {
    let text = r##"{
        "_graph": {"format_version": 1, "layout": {"zoom": 1.5}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["1", 0], "prefix": "clip"}, "_meta": {"title": "Save it"}},
        "1": {"_meta": {"title": "Reference", "color": "#ff0000"}, "class_type": "LoadReference", "inputs": {"path": "a.gif"}},
        "_note": "kept"
    }"##;
    let graph = Graph::parse(text, origin()).unwrap();
    assert_eq!(graph.nodes.len(), 2);
    assert_eq!(graph.nodes[0].0, "3");
    assert_eq!(graph.node("1").unwrap().extra["_meta"]["color"], "#ff0000");
    assert_eq!(graph.meta["_graph"]["layout"]["zoom"], 1.5);
    let saved: Json = serde_json::from_str(&graph.to_string_pretty()).unwrap();
    assert_eq!(
        saved["_graph"],
        json!({"format_version": 1, "layout": {"zoom": 1.5}})
    );
    assert_eq!(saved["_note"], "kept");
    assert_eq!(saved["3"]["_meta"]["title"], "Save it");
    assert_eq!(
        saved["1"]["_meta"],
        json!({"title": "Reference", "color": "#ff0000"})
    );
    assert_eq!(saved["3"]["inputs"]["video"], json!(["1", 0]));
    assert_eq!(
        graph.node("3").unwrap().input("video"),
        Some(&InputValue::Link {
            node: "1".into(),
            slot: 0
        })
    );
}

#[test]
fn save_writes_atomically_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graph.json");
    let mut rng = Rng::new();
    for _ in 0..5 {
        let graph = Graph::from_json(random_document(&mut rng), origin()).unwrap();
        graph.save(&path).unwrap(); // overwrites the previous one
        assert_eq!(Graph::load(&path).unwrap(), graph);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["graph.json"], "no temporary file left behind");
    }
    let missing = dir.path().join("no-such-folder").join("g.json");
    let err = Graph::load(&path).unwrap().save(&missing).unwrap_err();
    assert!(matches!(err, GraphError::Write { .. }), "{err}");
    assert!(err.to_string().contains("no-such-folder"), "{err}");
}

#[test]
fn a_node_without_inputs_has_none() {
    let graph = Graph::parse(r#"{"1": {"class_type": "Clip"}}"#, origin()).unwrap();
    assert!(graph.node("1").unwrap().inputs.is_empty());
}

#[test]
fn set_input_replaces_or_adds() {
    let mut graph = Graph::parse(
        r#"{"1": {"class_type": "Num", "inputs": {"value": 3, "b": 1}}}"#,
        origin(),
    )
    .unwrap();
    let node = graph.node_mut("1").unwrap();
    node.set_input("value", InputValue::Literal(json!(-41)));
    node.set_input(
        "c",
        InputValue::Link {
            node: "9".into(),
            slot: 2,
        },
    );
    let names: Vec<&str> = node.inputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["value", "b", "c"],
        "replaced in place, added at the end"
    );
    assert_eq!(
        graph.to_json()["1"]["inputs"],
        json!({"value": -41, "b": 1, "c": ["9", 2]})
    );
}

fn load_text(text: &str) -> (GraphError, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("my graph.json");
    std::fs::write(&path, text).unwrap();
    let err = Graph::load(&path).expect_err(text);
    (err, path)
}

#[test]
fn broken_json_is_one_line_naming_the_file() {
    for text in [
        "",
        "{",
        "{\"1\": {\"class_type\": \"Num\",}}",
        "nul",
        "{} trailing",
        "{\"1\": {\"class_type\": \"Num\" \"inputs\": {}}}",
        "\u{feff}{}",
    ] {
        let (err, path) = load_text(text);
        assert!(matches!(err, GraphError::Json { .. }), "{text:?}: {err}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains("not valid JSON") && message.contains("line"),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let err = Graph::load(Path::new("/definitely/not/here.json")).unwrap_err();
    assert!(matches!(err, GraphError::Read { .. }), "{err}");
    assert!(
        err.to_string().contains("/definitely/not/here.json"),
        "{err}"
    );
}

#[test]
fn wrong_shapes_name_the_node_and_input() {
    let cases: &[(&str, &[&str])] = &[
        ("[]", &["must be a JSON object"]),
        ("[{\"class_type\": \"Num\"}]", &["must be a JSON object"]),
        ("\"graph\"", &["must be a JSON object"]),
        ("42", &["must be a JSON object"]),
        ("null", &["must be a JSON object"]),
        (r#"{"7": 5}"#, &["node 7", "object"]),
        (r#"{"7": ["Num"]}"#, &["node 7", "object"]),
        (
            r#"{"7": {"inputs": {}}}"#,
            &["node 7", "class_type is missing"],
        ),
        (
            r#"{"7": {"class_type": 3, "inputs": {}}}"#,
            &["node 7", "class_type must be"],
        ),
        (
            r#"{"7": {"class_type": "", "inputs": {}}}"#,
            &["node 7", "non-empty"],
        ),
        (
            r#"{"7": {"class_type": "Num", "inputs": [1, 2]}}"#,
            &["node 7", "inputs must be an object"],
        ),
        (
            r#"{"7": {"class_type": "Num", "inputs": "value=3"}}"#,
            &["node 7", "inputs must be an object"],
        ),
        (
            r#"{"1": {"class_type": "Num", "inputs": {}}, "7": {"class_type": "Add", "inputs": {"a": ["1", -1]}}}"#,
            &["node 7", "input 'a'", "link"],
        ),
        (
            r#"{"7": {"class_type": "Add", "inputs": {"a": ["1", 1.5]}}}"#,
            &["node 7", "input 'a'", "link"],
        ),
        (
            r#"{"7": {"class_type": "Add", "inputs": {"a": ["1", "0"]}}}"#,
            &["node 7", "input 'a'", "link"],
        ),
        (
            r#"{"7": {"class_type": "Add", "inputs": {"a": ["1"]}}}"#,
            &["node 7", "input 'a'"],
        ),
        (
            r#"{"7": {"class_type": "Add", "inputs": {"a": ["1", 0, 2]}}}"#,
            &["node 7", "input 'a'"],
        ),
        (
            r#"{"7": {"class_type": "Add", "inputs": {"a": [1, 0]}}}"#,
            &["node 7", "input 'a'"],
        ),
        (
            r#"{"7": {"class_type": "Add", "inputs": {"a": {"node": "1"}}}}"#,
            &["node 7", "input 'a'", "object"],
        ),
    ];
    for (text, fragments) in cases {
        let (err, path) = load_text(text);
        assert!(
            matches!(err, GraphError::Shape { .. }),
            "{text}: expected a shape error, got {err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{text}: {message}"
        );
        for f in *fragments {
            assert!(
                message.contains(f),
                "{text}: {message:?} should mention {f:?}"
            );
        }
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

#[test]
fn a_newer_graph_format_is_refused_naming_both_versions() {
    let current = node_host::graph::GRAPH_FORMAT_VERSION;
    let ok =
        format!(r#"{{"_graph": {{"format_version": {current}}}, "1": {{"class_type": "Num"}}}}"#);
    Graph::parse(&ok, origin()).expect("the current format loads");
    let newer = current + 1 + std::process::id() as u64 % 50;
    let (err, _) = load_text(&format!(
        r#"{{"_graph": {{"format_version": {newer}}}, "1": {{"class_type": "Num"}}}}"#
    ));
    assert!(
        matches!(err, GraphError::TooNew { found, .. } if found == newer),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&newer.to_string()) && message.contains(&current.to_string()),
        "{message}"
    );
}

#[test]
fn duplicate_node_ids_and_input_names_are_refused_with_the_line() {
    for (text, key, line) in [
        (
            "{\"1\": {\"class_type\": \"A\"},\n \"2\": {\"class_type\": \"B\"},\n \"1\": {\"class_type\": \"C\"}}",
            "\"1\"",
            3,
        ),
        (
            "{\"1\": {\"class_type\": \"A\",\n  \"inputs\": {\"value\": 1,\n             \"value\": 2}}}",
            "\"value\"",
            3,
        ),
    ] {
        let err = Graph::parse(text, origin()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GraphError::Json { .. }), "{msg}");
        assert!(msg.contains(&format!("duplicate key {key}")), "{msg}");
        assert!(msg.contains(&format!("line {line}")), "{msg}");
        assert!(msg.contains(&origin().display().to_string()), "{msg}");
    }
    // Equal keys in different objects are fine.
    let g = Graph::parse(
        r#"{"1": {"class_type": "A", "inputs": {"x": 1}}, "2": {"class_type": "A", "inputs": {"x": 2}}}"#,
        origin(),
    )
    .unwrap();
    assert_eq!(g.nodes.len(), 2);
}
