//! Saved graphs: `{"<id>": {"class_type": ..., "inputs": {name: literal | ["<id>", slot]}}}`,
//! the shape of ComfyUI's API prompt. Top-level keys starting with `_` are document metadata
//! (`_graph`: format version, editor layout); node entries keep unknown keys (e.g. `_meta`),
//! so load → save is stable and tools that add keys lose nothing.

use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};

/// JSON with duplicate object keys refused. serde_json keeps the last of two equal keys
/// silently, so a hand-edited or merged graph with two nodes of one id (or an input given
/// twice) would lose one without a word; this names the key and its line instead.
struct UniqueKeys(Json);

/// Parses JSON like `serde_json::from_slice`, but refuses an object with two equal keys
/// (anywhere in the document): what graph documents and API bodies are read with.
pub fn json_from_slice_unique(bytes: &[u8]) -> Result<Json, serde_json::Error> {
    serde_json::from_slice::<UniqueKeys>(bytes).map(|u| u.0)
}

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key \"{key}\" (a node id or input name may appear only once)"
                )));
            }
            let UniqueKeys(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Json::Object(out))
    }
}

/// The graph document version this host writes.
pub const GRAPH_FORMAT_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Shape { path: PathBuf, message: String },
    #[error(
        "{path}: graph format version {found} is newer than this host's ({GRAPH_FORMAT_VERSION})"
    )]
    TooNew { path: PathBuf, found: u64 },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An input's value in a saved graph.
#[derive(Debug, Clone, PartialEq)]
pub enum InputValue {
    /// Output `slot` of node `node`.
    Link { node: String, slot: usize },
    /// A constant (widget value).
    Literal(Json),
}

/// One node of a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    pub class_type: String,
    /// In document order.
    pub inputs: Vec<(String, InputValue)>,
    /// Keys other than `class_type` and `inputs`, kept as they were.
    pub extra: Map<String, Json>,
}

impl NodeEntry {
    pub fn input(&self, name: &str) -> Option<&InputValue> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Sets (or adds) an input.
    pub fn set_input(&mut self, name: &str, value: InputValue) {
        match self.inputs.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.inputs.push((name.to_string(), value)),
        }
    }
}

/// A graph document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    /// Node id → node, in document order.
    pub nodes: Vec<(String, NodeEntry)>,
    /// Top-level `_`-prefixed keys (document metadata), kept as they were.
    pub meta: Map<String, Json>,
}

impl Graph {
    pub fn node(&self, id: &str) -> Option<&NodeEntry> {
        self.nodes.iter().find(|(n, _)| n == id).map(|(_, e)| e)
    }

    pub fn node_mut(&mut self, id: &str) -> Option<&mut NodeEntry> {
        self.nodes.iter_mut().find(|(n, _)| n == id).map(|(_, e)| e)
    }

    /// Reads and parses a graph file.
    pub fn load(path: &Path) -> Result<Graph, GraphError> {
        let text = std::fs::read_to_string(path).map_err(|source| GraphError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses graph JSON; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Graph, GraphError> {
        let json = serde_json::from_str::<UniqueKeys>(text)
            .map_err(|source| GraphError::Json {
                path: origin.into(),
                source,
            })?
            .0;
        Self::from_json(json, origin)
    }

    pub fn from_json(json: Json, origin: &Path) -> Result<Graph, GraphError> {
        let shape = |message: String| GraphError::Shape {
            path: origin.into(),
            message,
        };
        let Json::Object(top) = json else {
            return Err(shape(
                "a graph must be a JSON object of nodes keyed by id".into(),
            ));
        };
        let mut graph = Graph::default();
        for (id, entry) in top {
            if id.starts_with('_') {
                graph.meta.insert(id, entry);
                continue;
            }
            // `shift_remove` below, not `remove`: with `preserve_order`, `remove` swaps the last
            // key into the hole, reordering the node's other keys on every load.
            let Json::Object(mut fields) = entry else {
                return Err(shape(format!(
                    "node {id}: must be an object with class_type and inputs"
                )));
            };
            let class_type = match fields.shift_remove("class_type") {
                Some(Json::String(s)) if !s.is_empty() => s,
                Some(_) => {
                    return Err(shape(format!(
                        "node {id}: class_type must be a non-empty string"
                    )))
                }
                None => return Err(shape(format!("node {id}: class_type is missing"))),
            };
            let inputs = match fields.shift_remove("inputs") {
                None => Vec::new(),
                Some(Json::Object(map)) => map
                    .into_iter()
                    .map(|(name, v)| {
                        Ok((
                            name.clone(),
                            parse_input(v)
                                .map_err(|m| shape(format!("node {id}, input '{name}': {m}")))?,
                        ))
                    })
                    .collect::<Result<Vec<_>, GraphError>>()?,
                Some(_) => return Err(shape(format!("node {id}: inputs must be an object"))),
            };
            graph.nodes.push((
                id,
                NodeEntry {
                    class_type,
                    inputs,
                    extra: fields,
                },
            ));
        }
        if let Some(found) = graph
            .meta
            .get("_graph")
            .and_then(|g| g.get("format_version"))
            .and_then(Json::as_u64)
        {
            if found > GRAPH_FORMAT_VERSION {
                return Err(GraphError::TooNew {
                    path: origin.into(),
                    found,
                });
            }
        }
        Ok(graph)
    }

    pub fn to_json(&self) -> Json {
        let mut top = Map::new();
        for (id, node) in &self.nodes {
            let mut entry = Map::new();
            entry.insert("class_type".into(), Json::String(node.class_type.clone()));
            let inputs: Map<String, Json> = node
                .inputs
                .iter()
                .map(|(name, v)| {
                    let json = match v {
                        InputValue::Link { node, slot } => {
                            Json::Array(vec![Json::String(node.clone()), Json::from(*slot)])
                        }
                        InputValue::Literal(j) => j.clone(),
                    };
                    (name.clone(), json)
                })
                .collect();
            entry.insert("inputs".into(), Json::Object(inputs));
            for (k, v) in &node.extra {
                entry.insert(k.clone(), v.clone());
            }
            top.insert(id.clone(), Json::Object(entry));
        }
        for (k, v) in &self.meta {
            top.insert(k.clone(), v.clone());
        }
        Json::Object(top)
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_string_pretty(&self) -> String {
        let mut s =
            serde_json::to_string_pretty(&self.to_json()).expect("JSON values always serialise");
        s.push('\n');
        s
    }

    /// Writes the graph atomically (temporary file, then rename), so an interrupted save
    /// never leaves a corrupt graph behind.
    pub fn save(&self, path: &Path) -> Result<(), GraphError> {
        let write = |source| GraphError::Write {
            path: path.into(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "graph".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.to_string_pretty().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write)
    }
}

/// A two-element array `["<id>", slot]` is a link; anything else is a literal.
fn parse_input(v: Json) -> Result<InputValue, String> {
    if let Json::Array(items) = &v {
        if items.len() == 2 {
            if let (Some(node), Some(slot)) = (items[0].as_str(), items[1].as_u64()) {
                return Ok(InputValue::Link {
                    node: node.to_string(),
                    slot: slot as usize,
                });
            }
            if items[0].is_string() {
                return Err(format!(
                    "link {v} must be [\"<node id>\", <output index ≥ 0>]"
                ));
            }
        }
        return Err(format!("lists are not input values: {v}"));
    }
    if v.is_object() {
        return Err(format!("objects are not input values: {v}"));
    }
    Ok(InputValue::Literal(v))
}
