//! Node schemas: declared once by a plugin, read by validation, the executor, the CLI's
//! `nodes` listing and the editor.

use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};

/// The type of a socket or widget.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// Frames `[F, H, W, C]` f32 in 0..1 plus fps.
    Video,
    /// A model-space tensor (e.g. `[B, C, F, H, W]`).
    Latent,
    /// Encoded prompts (positive and negative), owned by the plugin that made them.
    Conditioning,
    /// A loaded model, owned by the plugin that made it.
    Model,
    Int,
    Float,
    String,
    Boolean,
    /// One of the input's `choices`, carried as a string.
    Choice,
}

impl ValueType {
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Video => "VIDEO",
            ValueType::Latent => "LATENT",
            ValueType::Conditioning => "CONDITIONING",
            ValueType::Model => "MODEL",
            ValueType::Int => "INT",
            ValueType::Float => "FLOAT",
            ValueType::String => "STRING",
            ValueType::Boolean => "BOOLEAN",
            ValueType::Choice => "CHOICE",
        }
    }

    /// Whether a widget can hold a value of this type (as opposed to a link-only type).
    pub fn is_literal(self) -> bool {
        matches!(
            self,
            ValueType::Int
                | ValueType::Float
                | ValueType::String
                | ValueType::Boolean
                | ValueType::Choice
        )
    }

    /// Whether an output of type `self` may feed an input of type `input`.
    pub fn feeds(self, input: ValueType) -> bool {
        self == input
            || matches!(
                (self, input),
                (ValueType::String, ValueType::Choice) | (ValueType::Choice, ValueType::String)
            )
            || (self == ValueType::Int && input == ValueType::Float)
    }
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether an input takes a link, a constant (widget), or either.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Link,
    Constant,
    Either,
}

/// What a STRING input names on disk, so a host that confines file access (the editor's
/// server) knows which inputs to resolve inside its input and output folders. Plain
/// strings are `None`; hosts without confinement (the CLI) ignore it.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    None,
    /// A file or folder the node reads (e.g. a reference video).
    InputFile,
    /// A folder the node writes into (e.g. a saver's destination).
    OutputFolder,
}

impl FileRole {
    /// The name used in schema JSON (`null` for `None`).
    pub fn name(self) -> Option<&'static str> {
        match self {
            FileRole::None => None,
            FileRole::InputFile => Some("input_file"),
            FileRole::OutputFolder => Some("output_folder"),
        }
    }
}

/// A constant value as saved in a graph (widget value or default).
#[repr(C, u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum Literal {
    Int(i64),
    Float(f64),
    String(RString),
    Boolean(bool),
}

/// One input of a node.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct InputSpec {
    /// Stable id used in saved graphs.
    pub name: RString,
    pub ty: ValueType,
    pub required: bool,
    pub default: ROption<Literal>,
    pub min: ROption<f64>,
    pub max: ROption<f64>,
    pub step: ROption<f64>,
    /// For `Choice`: the allowed values.
    pub choices: RVec<RString>,
    pub tooltip: RString,
    pub accepts: InputKind,
    /// Whether this (STRING) input is a path, and which way data flows through it.
    pub file: FileRole,
}

/// One output socket of a node.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct OutputSpec {
    pub name: RString,
    pub ty: ValueType,
}

/// Everything a host needs to know about a node class.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct NodeDescriptor {
    /// Stable id used in saved graphs (`class_type`).
    pub class_type: RString,
    /// Bumped when the node's behaviour changes, so cached results are not reused.
    pub version: u32,
    pub display_name: RString,
    pub category: RString,
    pub description: RString,
    pub inputs: RVec<InputSpec>,
    pub outputs: RVec<OutputSpec>,
    /// Output nodes (e.g. savers) are what a run executes; everything else runs only when
    /// an output node needs it.
    pub is_output: bool,
}

impl NodeDescriptor {
    /// A node class with no inputs or outputs yet, version 1, shown as its `class_type`;
    /// chain the setters below to complete it.
    pub fn new(class_type: &str, category: &str, description: &str) -> Self {
        NodeDescriptor {
            class_type: class_type.into(),
            version: 1,
            display_name: class_type.into(),
            category: category.into(),
            description: description.into(),
            inputs: RVec::new(),
            outputs: RVec::new(),
            is_output: false,
        }
    }

    pub fn display_name(mut self, name: &str) -> Self {
        self.display_name = name.into();
        self
    }

    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    pub fn inputs(mut self, inputs: Vec<InputSpec>) -> Self {
        self.inputs = inputs.into();
        self
    }

    pub fn outputs(mut self, outputs: &[(&str, ValueType)]) -> Self {
        self.outputs = outputs
            .iter()
            .map(|(name, ty)| OutputSpec {
                name: (*name).into(),
                ty: *ty,
            })
            .collect();
        self
    }

    /// Marks the node as an output node (what a run executes).
    pub fn output_node(mut self) -> Self {
        self.is_output = true;
        self
    }

    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name.as_str() == name)
    }
}

/// Builder for [`InputSpec`], so plugins declare inputs in one readable line each.
#[derive(Debug, Clone)]
pub struct InputBuilder(InputSpec);

impl InputSpec {
    /// A required input of type `ty`; widgets for literal types, links otherwise.
    /// Returns a builder: `InputSpec::new("steps", ValueType::Int).range(1.0, 100.0, 1.0).build()`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(name: &str, ty: ValueType) -> InputBuilder {
        InputBuilder(InputSpec {
            name: name.into(),
            ty,
            required: true,
            default: ROption::RNone,
            min: ROption::RNone,
            max: ROption::RNone,
            step: ROption::RNone,
            choices: RVec::new(),
            tooltip: RString::new(),
            accepts: if ty.is_literal() {
                InputKind::Either
            } else {
                InputKind::Link
            },
            file: FileRole::None,
        })
    }
}

impl InputBuilder {
    pub fn optional(mut self) -> Self {
        self.0.required = false;
        self
    }
    pub fn default(mut self, value: Literal) -> Self {
        self.0.default = ROption::RSome(value);
        self
    }
    pub fn range(mut self, min: f64, max: f64, step: f64) -> Self {
        self.0.min = ROption::RSome(min);
        self.0.max = ROption::RSome(max);
        self.0.step = ROption::RSome(step);
        self
    }
    pub fn choices(mut self, choices: &[&str]) -> Self {
        self.0.choices = choices.iter().map(|c| RString::from(*c)).collect();
        self
    }
    pub fn tooltip(mut self, text: &str) -> Self {
        self.0.tooltip = text.into();
        self
    }
    pub fn accepts(mut self, kind: InputKind) -> Self {
        self.0.accepts = kind;
        self
    }
    /// Marks the input as a path with `role` (see [`FileRole`]).
    pub fn file(mut self, role: FileRole) -> Self {
        self.0.file = role;
        self
    }
    pub fn build(self) -> InputSpec {
        self.0
    }
}
