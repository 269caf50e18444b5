//! Validation: every problem of a graph against the registry, in one pass, each naming the
//! node id, its class and the input concerned.

use std::collections::HashMap;

use node_abi::{InputKind, InputSpec, NodeDescriptor, Value, ValueType};
use serde_json::Value as Json;

use crate::graph::{Graph, InputValue};
use crate::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    UnknownClass,
    UnknownInput,
    MissingInput,
    WrongType,
    OutOfRange,
    MissingNode,
    MissingSlot,
    Cycle,
    NoOutputNode,
}

/// One thing wrong with a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// `None` for problems of the whole graph.
    pub node: Option<String>,
    pub class_type: Option<String>,
    pub input: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.node, &self.class_type) {
            (Some(n), Some(c)) => write!(f, "node {n} ({c})")?,
            (Some(n), None) => write!(f, "node {n}")?,
            _ => write!(f, "graph")?,
        }
        if let Some(i) = &self.input {
            write!(f, ", input '{i}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Converts a saved literal to the value an input of `spec` receives, checking its type,
/// range and choices. The error says what is wrong (without the node/input prefix).
pub fn literal_value(spec: &InputSpec, json: &Json) -> Result<Value, (ProblemKind, String)> {
    let wrong = |want: &str| {
        (
            ProblemKind::WrongType,
            format!("expected {want}, got {}", describe(json)),
        )
    };
    let value = match spec.ty {
        ValueType::Int => match json {
            Json::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Value::Int(i),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Int(f as i64),
                _ => {
                    return Err((
                        ProblemKind::OutOfRange,
                        format!("{n} is not a representable integer"),
                    ))
                }
            },
            _ => return Err(wrong("an integer")),
        },
        ValueType::Float => match json.as_f64() {
            Some(f) if f.is_finite() => Value::Float(f),
            _ => return Err(wrong("a number")),
        },
        ValueType::String => match json {
            Json::String(s) => Value::String(s.as_str().into()),
            _ => return Err(wrong("a string")),
        },
        ValueType::Boolean => match json {
            Json::Bool(b) => Value::Boolean(*b),
            _ => return Err(wrong("true or false")),
        },
        ValueType::Choice => match json {
            Json::String(s) if spec.choices.iter().any(|c| c.as_str() == s) => {
                Value::String(s.as_str().into())
            }
            Json::String(s) => {
                let allowed: Vec<&str> = spec.choices.iter().map(|c| c.as_str()).collect();
                return Err((
                    ProblemKind::OutOfRange,
                    format!("'{s}' is not one of {}", allowed.join(", ")),
                ));
            }
            _ => return Err(wrong("one of the choices (a string)")),
        },
        other => {
            return Err((
                ProblemKind::WrongType,
                format!(
                    "{other} inputs take a link, not a constant ({})",
                    describe(json)
                ),
            ))
        }
    };
    check_value(spec, &value)?;
    Ok(value)
}

/// Checks a value an input of `spec` is about to receive against its range and choices.
/// Literals are checked by [`literal_value`] when a graph is validated; the executor checks
/// values arriving over links, which are only known at run time.
pub fn check_value(spec: &InputSpec, value: &Value) -> Result<(), (ProblemKind, String)> {
    let number = match value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    if let Some(x) = number {
        if let Some(min) = spec.min.into_option() {
            if x < min {
                return Err((
                    ProblemKind::OutOfRange,
                    format!("{x} is below the minimum {min}"),
                ));
            }
        }
        if let Some(max) = spec.max.into_option() {
            if x > max {
                return Err((
                    ProblemKind::OutOfRange,
                    format!("{x} is above the maximum {max}"),
                ));
            }
        }
    }
    if let (ValueType::Choice, Value::String(s)) = (spec.ty, value) {
        if !spec.choices.iter().any(|c| c == s) {
            let allowed: Vec<&str> = spec.choices.iter().map(|c| c.as_str()).collect();
            return Err((
                ProblemKind::OutOfRange,
                format!("'{s}' is not one of {}", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn describe(json: &Json) -> String {
    let s = json.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// All problems of `graph`; empty when it can run.
pub fn validate(graph: &Graph, registry: &Registry) -> Vec<Problem> {
    let mut problems = Vec::new();
    let descriptors: HashMap<&str, &NodeDescriptor> = graph
        .nodes
        .iter()
        .filter_map(|(id, n)| {
            registry
                .class(&n.class_type)
                .map(|c| (id.as_str(), &c.descriptor))
        })
        .collect();

    for (id, node) in &graph.nodes {
        let mut problem = |kind, input: Option<&str>, message: String| {
            problems.push(Problem {
                kind,
                node: Some(id.clone()),
                class_type: Some(node.class_type.clone()),
                input: input.map(str::to_string),
                message,
            })
        };
        let Some(desc) = descriptors.get(id.as_str()) else {
            problem(
                ProblemKind::UnknownClass,
                None,
                format!(
                    "unknown node class '{}' (is its plugin loaded?)",
                    node.class_type
                ),
            );
            continue;
        };
        for (name, value) in &node.inputs {
            let Some(spec) = desc.input(name) else {
                let known: Vec<&str> = desc.inputs.iter().map(|i| i.name.as_str()).collect();
                problem(
                    ProblemKind::UnknownInput,
                    Some(name),
                    format!("no such input (inputs: {})", known.join(", ")),
                );
                continue;
            };
            match value {
                InputValue::Literal(json) => {
                    if spec.accepts == InputKind::Link {
                        problem(
                            ProblemKind::WrongType,
                            Some(name),
                            format!("takes a link to a {} output, not a constant", spec.ty),
                        );
                    } else if let Err((kind, message)) = literal_value(spec, json) {
                        problem(kind, Some(name), message);
                    }
                }
                InputValue::Link { node: src, slot } => {
                    if spec.accepts == InputKind::Constant {
                        problem(
                            ProblemKind::WrongType,
                            Some(name),
                            "takes a constant, not a link".into(),
                        );
                        continue;
                    }
                    let Some(src_node) = graph.node(src) else {
                        problem(
                            ProblemKind::MissingNode,
                            Some(name),
                            format!("links to node {src}, which is not in the graph"),
                        );
                        continue;
                    };
                    let Some(src_desc) = descriptors.get(src.as_str()) else {
                        continue; // reported as an unknown class on that node
                    };
                    match src_desc.outputs.get(*slot) {
                        None => problem(
                            ProblemKind::MissingSlot,
                            Some(name),
                            format!(
                                "links to output {slot} of node {src} ({}), which has {} output(s)",
                                src_node.class_type,
                                src_desc.outputs.len()
                            ),
                        ),
                        Some(out) if !out.ty.feeds(spec.ty) => problem(
                            ProblemKind::WrongType,
                            Some(name),
                            format!(
                                "expects {}, but output {slot} '{}' of node {src} ({}) is {}",
                                spec.ty, out.name, src_node.class_type, out.ty
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
        for spec in desc
            .inputs
            .iter()
            .filter(|s| s.required && s.default.is_none())
        {
            if node.input(&spec.name).is_none() {
                problem(
                    ProblemKind::MissingInput,
                    Some(&spec.name),
                    format!("required {} input is missing", spec.ty),
                );
            }
        }
    }

    for cycle in find_cycles(graph) {
        let class_type = graph.node(&cycle[0]).map(|n| n.class_type.clone());
        problems.push(Problem {
            kind: ProblemKind::Cycle,
            node: Some(cycle[0].clone()),
            class_type,
            input: None,
            message: format!("is part of a cycle: {}", cycle.join(" -> ")),
        });
    }

    if !descriptors.values().any(|d| d.is_output) && !graph.nodes.is_empty() {
        problems.push(Problem {
            kind: ProblemKind::NoOutputNode,
            node: None,
            class_type: None,
            input: None,
            message: "has no output node (e.g. SaveVideo), so running it would do nothing".into(),
        });
    }
    if graph.nodes.is_empty() {
        problems.push(Problem {
            kind: ProblemKind::NoOutputNode,
            node: None,
            class_type: None,
            input: None,
            message: "has no nodes".into(),
        });
    }
    problems
}

/// Each cycle once, as the list of node ids along it (closing back to the first).
fn find_cycles(graph: &Graph) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let index: HashMap<&str, usize> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    let edges: Vec<Vec<usize>> = graph
        .nodes
        .iter()
        .map(|(_, n)| {
            n.inputs
                .iter()
                .filter_map(|(_, v)| match v {
                    InputValue::Link { node, .. } => index.get(node.as_str()).copied(),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let mut mark = vec![Mark::New; graph.nodes.len()];
    let mut cycles = Vec::new();
    for start in 0..graph.nodes.len() {
        if mark[start] != Mark::New {
            continue;
        }
        // Iterative DFS keeping the open path, so deep graphs cannot overflow the stack.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                match mark[to] {
                    Mark::New => {
                        mark[to] = Mark::Open;
                        stack.push((to, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        let mut ids: Vec<String> = stack[from..]
                            .iter()
                            .map(|(n, _)| graph.nodes[*n].0.clone())
                            .collect();
                        ids.push(graph.nodes[to].0.clone());
                        cycles.push(ids);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    cycles
}
