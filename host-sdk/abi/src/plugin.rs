//! For plugin authors: write nodes as plain Rust ([`Node`]) and let [`into_instance`] wrap
//! them for the boundary. The wrapper catches panics, so nothing unwinds across the ABI:
//! a panicking node becomes a `NodeErrorKind::Panic` error for that node only.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::{
    sabi_trait,
    sabi_trait::TD_CanDowncast,
    std_types::{RArc, RBox, RResult, RStr, RString, RVec, Tuple2},
};

use crate::error::{NodeError, NodeErrorKind};
use crate::host::{HostRef, LogLevel};
use crate::schema::NodeDescriptor;
use crate::value::{Latent, Opaque, OpaqueObject, Opaque_TO, Value, Video};
use crate::NodeInstanceBox;

/// The boundary-facing node instance. Plugins normally implement [`Node`] instead.
#[sabi_trait]
pub trait NodeInstance: Send {
    /// Runs the node on named inputs (links resolved, defaults applied by the host) and
    /// returns one value per declared output, in order.
    #[sabi(last_prefix_field)]
    fn run(
        &mut self,
        inputs: RVec<Tuple2<RString, Value>>,
        host: HostRef<'_>,
    ) -> RResult<RVec<Value>, NodeError>;
}

/// A node written in plain Rust.
pub trait Node: Send + 'static {
    fn run(&mut self, inputs: &Inputs, host: &Host<'_, '_>) -> Result<Vec<Value>, NodeError>;
}

struct Adapter<N: Node>(N);

impl<N: Node> NodeInstance for Adapter<N> {
    fn run(
        &mut self,
        inputs: RVec<Tuple2<RString, Value>>,
        host: HostRef<'_>,
    ) -> RResult<RVec<Value>, NodeError> {
        let inputs = Inputs::from_pairs(inputs);
        let host = Host { inner: &host };
        guard(|| self.0.run(&inputs, &host).map(RVec::from))
    }
}

/// A node class declared by a plugin: its schema and how to make an instance. A plugin
/// keeps one static list of these and answers the root module's `nodes` and `create_node`
/// with [`describe`] and [`create`].
pub struct NodeClass {
    pub descriptor: fn() -> NodeDescriptor,
    pub create: fn() -> NodeInstanceBox,
}

/// The schemas of `classes`, for the root module's `nodes`. A schema constructor that
/// panics (a bug) leaves its class out instead of aborting the host.
pub fn describe(classes: &[NodeClass]) -> RVec<NodeDescriptor> {
    classes
        .iter()
        .filter_map(|c| catch_unwind(c.descriptor).ok())
        .collect()
}

/// An instance of `class_type` from `classes`, for the root module's `create_node`.
pub fn create(classes: &[NodeClass], class_type: RStr<'_>) -> RResult<NodeInstanceBox, NodeError> {
    guard(|| {
        classes
            .iter()
            .find(|c| (c.descriptor)().class_type.as_str() == class_type.as_str())
            .map(|c| (c.create)())
            .ok_or_else(|| {
                NodeError::new(
                    NodeErrorKind::InvalidInput,
                    format!("this plugin has no node '{class_type}'"),
                )
            })
    })
}

/// Wraps a [`Node`] for the boundary.
pub fn into_instance<N: Node>(node: N) -> NodeInstanceBox {
    NodeInstance_TO::from_value(Adapter(node), abi_stable::sabi_trait::TD_Opaque)
}

/// Runs `f`, turning a panic into a `NodeErrorKind::Panic` error.
pub fn guard<T>(f: impl FnOnce() -> Result<T, NodeError>) -> RResult<T, NodeError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.into(),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            RResult::RErr(NodeError::new(
                NodeErrorKind::Panic,
                format!("node panicked: {what}"),
            ))
        }
    }
}

/// Wraps a plugin-owned object for a MODEL or CONDITIONING output.
pub fn opaque<T: Opaque + 'static>(value: T) -> OpaqueObject {
    RArc::new(Opaque_TO::from_value(value, TD_CanDowncast))
}

/// The host services as seen by a [`Node`].
pub struct Host<'a, 'b> {
    inner: &'a HostRef<'b>,
}

impl Host<'_, '_> {
    pub fn progress(&self, step: u64, total: u64, message: &str) {
        self.inner.progress(step, total, RStr::from(message));
    }
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
    /// `Err(cancelled)` when the user asked to stop: use with `?` between units of work.
    pub fn check_cancelled(&self) -> Result<(), NodeError> {
        if self.is_cancelled() {
            Err(NodeError::cancelled())
        } else {
            Ok(())
        }
    }
    pub fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, RStr::from(message));
    }
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }
}

/// Named inputs with typed getters whose errors name the input.
pub struct Inputs {
    values: HashMap<String, Value>,
}

impl Inputs {
    pub fn from_pairs(pairs: RVec<Tuple2<RString, Value>>) -> Self {
        Self {
            values: pairs
                .into_iter()
                .map(|Tuple2(k, v)| (k.into_string(), v))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    fn required(&self, name: &str) -> Result<&Value, NodeError> {
        self.get(name)
            .ok_or_else(|| NodeError::input(name, "is required but was not given"))
    }

    fn wrong(name: &str, want: &str, got: &Value) -> NodeError {
        NodeError::input(name, format!("expected {want}, got {}", got.ty()))
    }

    pub fn int(&self, name: &str) -> Result<i64, NodeError> {
        match self.required(name)? {
            Value::Int(v) => Ok(*v),
            Value::Float(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Ok(*v as i64),
            other => Err(Self::wrong(name, "INT", other)),
        }
    }

    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        match self.required(name)? {
            Value::Float(v) => Ok(*v),
            Value::Int(v) => Ok(*v as f64),
            other => Err(Self::wrong(name, "FLOAT", other)),
        }
    }

    pub fn string(&self, name: &str) -> Result<&str, NodeError> {
        match self.required(name)? {
            Value::String(v) => Ok(v.as_str()),
            other => Err(Self::wrong(name, "STRING", other)),
        }
    }

    pub fn boolean(&self, name: &str) -> Result<bool, NodeError> {
        match self.required(name)? {
            Value::Boolean(v) => Ok(*v),
            other => Err(Self::wrong(name, "BOOLEAN", other)),
        }
    }

    pub fn video(&self, name: &str) -> Result<RArc<Video>, NodeError> {
        match self.required(name)? {
            Value::Video(v) => Ok(v.clone()),
            other => Err(Self::wrong(name, "VIDEO", other)),
        }
    }

    pub fn latent(&self, name: &str) -> Result<RArc<Latent>, NodeError> {
        match self.required(name)? {
            Value::Latent(v) => Ok(v.clone()),
            other => Err(Self::wrong(name, "LATENT", other)),
        }
    }

    /// A MODEL or CONDITIONING input downcast to the plugin's own type `T`.
    pub fn opaque<T: 'static>(&self, name: &str) -> Result<&T, NodeError> {
        let obj = match self.required(name)? {
            Value::Model(o) | Value::Conditioning(o) => o,
            other => return Err(Self::wrong(name, "MODEL or CONDITIONING", other)),
        };
        obj.obj.downcast_as::<T>().map_err(|_| {
            NodeError::input(
                name,
                format!(
                    "was made by another plugin or node type ({})",
                    obj.describe()
                ),
            )
        })
    }

    /// Whether an optional input was given.
    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

/// Keeps `RBox` in this module's public surface for instance creation helpers.
pub type BoxedInstance = NodeInstance_TO<'static, RBox<()>>;
