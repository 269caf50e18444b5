//! Runs a graph: only what its output nodes need, in dependency order, reusing cached node
//! outputs across runs of one process.
//!
//! A node's cache key covers its class, class version, literal inputs and the keys of the
//! nodes feeding it, so changing one widget recomputes that node and what depends on it,
//! nothing upstream. Output nodes (savers) always run: running a graph means writing its
//! outputs.

use std::collections::{hash_map::DefaultHasher, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_abi::{
    abi_stable::{
        sabi_trait::TD_Opaque,
        sabi_types::RRef,
        std_types::{RStr, RString, RVec, Tuple2},
    },
    HostServices, HostServices_TO, LogLevel, NodeError, NodeErrorKind, Value,
};

use crate::graph::{Graph, InputValue};
use crate::registry::Registry;
use crate::validate::{check_value, literal_value, validate, Problem};

/// Shared flag a user (Ctrl-C, a cancel button) sets to stop a run.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What happens during a run, for progress displays and logs.
#[derive(Debug, Clone)]
pub enum Event {
    /// The nodes that will run (or be served from cache), in order.
    Plan {
        order: Vec<String>,
    },
    NodeStarted {
        node: String,
        class_type: String,
    },
    NodeCached {
        node: String,
        class_type: String,
    },
    Progress {
        node: String,
        step: u64,
        total: u64,
        message: String,
    },
    Log {
        node: String,
        level: LogLevel,
        message: String,
    },
    NodeFinished {
        node: String,
        class_type: String,
        elapsed: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("the graph has {} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    #[error("node {node} ({class_type}) failed: {error}")]
    Node {
        node: String,
        class_type: String,
        error: Box<NodeError>,
    },
    #[error("cancelled (while running node {node})")]
    Cancelled { node: String },
}

impl ExecError {
    pub fn is_cancelled(&self) -> bool {
        matches!(self, ExecError::Cancelled { .. })
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct RunReport {
    pub executed: Vec<String>,
    pub cached: Vec<String>,
    pub elapsed: Duration,
    /// What each output node returned (e.g. the path a saver wrote), by node id, in run
    /// order: scalars as JSON, link-only values (VIDEO, MODEL, …) as `null`. Lets a host
    /// show results without parsing logs.
    pub outputs: Vec<(String, Vec<serde_json::Value>)>,
}

struct CacheEntry {
    outputs: Vec<Value>,
}

/// Runs graphs, keeping node outputs between runs.
pub struct Executor {
    registry: Arc<Registry>,
    cache: HashMap<u64, CacheEntry>,
}

struct Services<'a> {
    node: &'a str,
    events: &'a (dyn Fn(Event) + Sync),
    cancel: &'a CancelToken,
}

impl HostServices for Services<'_> {
    fn progress(&self, step: u64, total: u64, message: RStr<'_>) {
        (self.events)(Event::Progress {
            node: self.node.to_string(),
            step,
            total,
            message: message.to_string(),
        });
    }
    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        (self.events)(Event::Log {
            node: self.node.to_string(),
            level,
            message: message.to_string(),
        });
    }
}

impl Executor {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            cache: HashMap::new(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Drops every cached output (e.g. to free models and memory between jobs).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Validates and runs `graph`. `events` is called from the running thread.
    pub fn run(
        &mut self,
        graph: &Graph,
        events: &(dyn Fn(Event) + Sync),
        cancel: &CancelToken,
    ) -> Result<RunReport, ExecError> {
        let problems = validate(graph, &self.registry);
        if !problems.is_empty() {
            return Err(ExecError::Invalid(problems));
        }
        let started = Instant::now();
        let order = self.plan(graph);
        events(Event::Plan {
            order: order.clone(),
        });

        let mut report = RunReport::default();
        let mut keys: HashMap<&str, u64> = HashMap::new();
        let mut outputs: HashMap<&str, Vec<Value>> = HashMap::new();
        for id in &order {
            let node = graph.node(id).expect("planned nodes exist");
            let class = self.registry.class(&node.class_type).expect("validated");
            let desc = &class.descriptor;
            if cancel.is_cancelled() {
                return Err(ExecError::Cancelled { node: id.clone() });
            }

            // Resolve inputs (links to upstream outputs, literals, defaults) and the cache key.
            let mut hasher = DefaultHasher::new();
            (
                desc.class_type.as_str(),
                desc.version,
                class.plugin.info.id.as_str(),
                class.plugin.info.version.as_str(),
            )
                .hash(&mut hasher);
            let mut inputs: Vec<Tuple2<RString, Value>> = Vec::new();
            for spec in desc.inputs.iter() {
                let name = spec.name.as_str();
                let value = match node.input(name) {
                    Some(InputValue::Link { node: src, slot }) => {
                        (name, "link", src.as_str(), *slot, keys[src.as_str()]).hash(&mut hasher);
                        let value = outputs[src.as_str()][*slot].clone();
                        // A linked value honours the input's range and choices like a literal.
                        if let Err((_, message)) = check_value(spec, &value) {
                            return Err(ExecError::Node {
                                node: id.clone(),
                                class_type: node.class_type.clone(),
                                error: Box::new(NodeError::input(
                                    name,
                                    format!("{message} (from node {src})"),
                                )),
                            });
                        }
                        Some(value)
                    }
                    Some(InputValue::Literal(json)) => {
                        (name, "literal", json.to_string()).hash(&mut hasher);
                        Some(literal_value(spec, json).expect("validated"))
                    }
                    None => spec.default.clone().into_option().map(|d| {
                        (name, "default", format!("{d:?}")).hash(&mut hasher);
                        Value::from(d)
                    }),
                };
                if let Some(v) = value {
                    inputs.push(Tuple2(spec.name.clone(), v));
                }
            }
            let key = hasher.finish();
            keys.insert(id.as_str(), key);

            if !desc.is_output {
                if let Some(hit) = self.cache.get(&key) {
                    events(Event::NodeCached {
                        node: id.clone(),
                        class_type: node.class_type.clone(),
                    });
                    outputs.insert(id.as_str(), hit.outputs.clone());
                    report.cached.push(id.clone());
                    continue;
                }
            }

            events(Event::NodeStarted {
                node: id.clone(),
                class_type: node.class_type.clone(),
            });
            let node_started = Instant::now();
            let fail = |error: NodeError| {
                if error.kind == NodeErrorKind::Cancelled || cancel.is_cancelled() {
                    ExecError::Cancelled { node: id.clone() }
                } else {
                    ExecError::Node {
                        node: id.clone(),
                        class_type: node.class_type.clone(),
                        error: Box::new(error),
                    }
                }
            };
            let mut instance = class.create().map_err(fail)?;
            let services = Services {
                node: id,
                events,
                cancel,
            };
            let host = HostServices_TO::from_ptr(RRef::new(&services), TD_Opaque);
            let produced: Vec<Value> = instance
                .run(RVec::from(inputs), host)
                .into_result()
                .map_err(fail)?
                .into_vec();
            self.check_outputs(id, &node.class_type, desc, &produced)?;
            events(Event::NodeFinished {
                node: id.clone(),
                class_type: node.class_type.clone(),
                elapsed: node_started.elapsed(),
            });
            if !desc.is_output {
                self.cache.insert(
                    key,
                    CacheEntry {
                        outputs: produced.clone(),
                    },
                );
            }
            if desc.is_output {
                report
                    .outputs
                    .push((id.clone(), produced.iter().map(scalar_json).collect()));
            }
            outputs.insert(id.as_str(), produced);
            report.executed.push(id.clone());
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    fn check_outputs(
        &self,
        id: &str,
        class_type: &str,
        desc: &node_abi::NodeDescriptor,
        produced: &[Value],
    ) -> Result<(), ExecError> {
        let bad = |message: String| ExecError::Node {
            node: id.to_string(),
            class_type: class_type.to_string(),
            error: Box::new(NodeError::new(NodeErrorKind::Internal, message)),
        };
        if produced.len() != desc.outputs.len() {
            return Err(bad(format!(
                "returned {} output(s), its schema declares {}",
                produced.len(),
                desc.outputs.len()
            )));
        }
        for (i, (value, spec)) in produced.iter().zip(desc.outputs.iter()).enumerate() {
            if !value.ty().feeds(spec.ty) {
                return Err(bad(format!(
                    "output {i} '{}' should be {}, got {}",
                    spec.name,
                    spec.ty,
                    value.ty()
                )));
            }
        }
        Ok(())
    }

    /// The nodes the output nodes need, dependencies first (document order among equals).
    fn plan(&self, graph: &Graph) -> Vec<String> {
        let is_output = |id: &str| {
            graph
                .node(id)
                .and_then(|n| self.registry.class(&n.class_type))
                .is_some_and(|c| c.descriptor.is_output)
        };
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for (id, _) in graph.nodes.iter().filter(|(id, _)| is_output(id)) {
            // Iterative post-order DFS; the graph is validated acyclic.
            let mut stack = vec![(id.clone(), false)];
            while let Some((n, expanded)) = stack.pop() {
                if done.contains(&n) {
                    continue;
                }
                if expanded {
                    done.insert(n.clone());
                    order.push(n);
                    continue;
                }
                stack.push((n.clone(), true));
                let node = graph.node(&n).expect("validated links");
                for (_, v) in node.inputs.iter().rev() {
                    if let InputValue::Link { node: src, .. } = v {
                        if !done.contains(src) {
                            stack.push((src.clone(), false));
                        }
                    }
                }
            }
        }
        order
    }
}

fn scalar_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Int(i) => (*i).into(),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::String(s) => s.as_str().into(),
        Value::Boolean(b) => (*b).into(),
        _ => serde_json::Value::Null,
    }
}
