//! `EncodePrompt`: positive and negative prompts → CONDITIONING for one model.

use std::sync::Arc;

use node_abi::{
    abi_stable::std_types::RString,
    plugin::{into_instance, opaque, Host, Inputs, Node},
    InputSpec, Literal, NodeDescriptor, NodeError, NodeErrorKind, Opaque, Value, ValueType,
};

use super::local_attention_dit::ModelHandle;
use super::NodeClass;
use crate::model::DitModel;

pub const CLASS: NodeClass = NodeClass {
    descriptor: schema,
    create: || into_instance(EncodePrompt),
};

fn schema() -> NodeDescriptor {
    NodeDescriptor::new("EncodePrompt", "FastVMT/conditioning", "Encodes what the video should show (positive) and what to steer away from (negative; empty = unconditional) with the model's text encoder, for classifier-free guidance.")
        .display_name("Encode Prompt")
        .version(1)
        .inputs(vec![
            InputSpec::new("model", ValueType::Model).build(),
            InputSpec::new("positive", ValueType::String).tooltip("what the generated video shows, e.g. \"a red circle on a blue background\"").build(),
            InputSpec::new("negative", ValueType::String).default(Literal::String("".into())).tooltip("empty = the unconditional prompt").build(),
        ])
        .outputs(&[("conditioning", ValueType::Conditioning)])
}

/// Encoded prompts (the CONDITIONING value), tied to the model that encoded them.
pub struct Conditioning {
    pub model: Arc<DitModel>,
    pub positive: String,
    pub negative: String,
    /// `[1, L, D]` each.
    pub positive_emb: Vec<f32>,
    pub negative_emb: Vec<f32>,
}

impl Opaque for Conditioning {
    fn describe(&self) -> RString {
        format!("\"{}\" for {}", self.positive, self.model.manifest().name).into()
    }
}

struct EncodePrompt;

impl Node for EncodePrompt {
    fn run(&mut self, inputs: &Inputs, host: &Host<'_, '_>) -> Result<Vec<Value>, NodeError> {
        let handle = inputs.opaque::<ModelHandle>("model")?;
        let positive = inputs.string("positive")?.trim().to_string();
        let negative = inputs.string("negative")?.trim().to_string();
        if positive.is_empty() {
            return Err(NodeError::input(
                "positive",
                "is empty: describe what the video should show",
            ));
        }
        let cancel = || host.is_cancelled();
        let (emb, unknown) = handle
            .model
            .encode_text(&[&positive, &negative], &cancel)
            .map_err(|e| NodeError::new(NodeErrorKind::Model, e.to_string()))?;
        if !unknown.is_empty() {
            host.warn(&format!(
                "words the model does not know (ignored as <unk>): {}",
                unknown.join(", ")
            ));
        }
        let half = emb.len() / 2;
        let cond = Conditioning {
            model: handle.model.clone(),
            positive,
            negative,
            positive_emb: emb[..half].to_vec(),
            negative_emb: emb[half..].to_vec(),
        };
        Ok(vec![Value::Conditioning(opaque(cond))])
    }
}
