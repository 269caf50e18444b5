//! Values that flow along links. Large payloads travel behind `RArc`, so passing a video
//! or tensor from one node to the next never copies it.

use abi_stable::{
    sabi_trait,
    std_types::{RArc, RString, RVec},
    StableAbi,
};

use crate::schema::{Literal, ValueType};

/// Frames `[frames, height, width, channels]` row-major, f32 in 0..1.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Video {
    pub frames: u32,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub fps: f32,
    pub data: RVec<f32>,
}

impl Video {
    /// Number of f32 values the dimensions call for.
    pub fn expected_len(&self) -> usize {
        self.frames as usize * self.height as usize * self.width as usize * self.channels as usize
    }
}

/// A dense f32 tensor, row-major.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: RVec<u64>,
    pub data: RVec<f32>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }
}

/// A latent video in a model's space, with the fps of the video it stands for.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Latent {
    pub tensor: Tensor,
    pub fps: f32,
    /// Which latent space (e.g. the model bundle's name), so a node can refuse a latent from
    /// another model.
    pub space: RString,
}

/// An object owned by the plugin that made it (a loaded model, encoded prompts). The host
/// only clones and drops it; the plugin downcasts it back to its own type.
#[sabi_trait]
pub trait Opaque: Send + Sync {
    /// A short description for logs and the editor ("tiny-shapes-dit on cpu").
    #[sabi(last_prefix_field)]
    fn describe(&self) -> RString;
}

/// A plugin-owned object, shared behind `RArc` so links clone the handle, not the object.
pub type OpaqueObject = RArc<Opaque_TO<'static, abi_stable::std_types::RBox<()>>>;

/// A value on a link or in a widget.
#[repr(C, u8)]
#[derive(StableAbi, Clone)]
pub enum Value {
    Int(i64),
    Float(f64),
    String(RString),
    Boolean(bool),
    Video(RArc<Video>),
    Latent(RArc<Latent>),
    Conditioning(OpaqueObject),
    Model(OpaqueObject),
}

impl Value {
    /// The socket type this value satisfies (`Choice` inputs receive `String`s).
    pub fn ty(&self) -> ValueType {
        match self {
            Value::Int(_) => ValueType::Int,
            Value::Float(_) => ValueType::Float,
            Value::String(_) => ValueType::String,
            Value::Boolean(_) => ValueType::Boolean,
            Value::Video(_) => ValueType::Video,
            Value::Latent(_) => ValueType::Latent,
            Value::Conditioning(_) => ValueType::Conditioning,
            Value::Model(_) => ValueType::Model,
        }
    }
}

impl From<Literal> for Value {
    fn from(l: Literal) -> Self {
        match l {
            Literal::Int(v) => Value::Int(v),
            Literal::Float(v) => Value::Float(v),
            Literal::String(v) => Value::String(v),
            Literal::Boolean(v) => Value::Boolean(v),
        }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "Int({v})"),
            Value::Float(v) => write!(f, "Float({v})"),
            Value::String(v) => write!(f, "String({v:?})"),
            Value::Boolean(v) => write!(f, "Boolean({v})"),
            Value::Video(v) => write!(
                f,
                "Video({}x{}x{}x{} @ {} fps)",
                v.frames, v.height, v.width, v.channels, v.fps
            ),
            Value::Latent(l) => write!(f, "Latent({:?} in {})", l.tensor.shape.as_slice(), l.space),
            Value::Conditioning(o) => write!(f, "Conditioning({})", o.describe()),
            Value::Model(o) => write!(f, "Model({})", o.describe()),
        }
    }
}
