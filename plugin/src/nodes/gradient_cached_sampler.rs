//! `GradientCachedSampler`: the motion-transfer sampler (plain, DiTFlow, FastVMT, adaptive).

use node_abi::{
    abi_stable::std_types::{RArc, RVec},
    plugin::{into_instance, Host, Inputs, Node},
    InputSpec, Latent, Literal, NodeDescriptor, NodeError, NodeErrorKind, Tensor, Value, ValueType,
    Video,
};

use super::encode_prompt::Conditioning;
use super::local_attention_dit::ModelHandle;
use super::NodeClass;
use crate::model::ModelError;
use crate::sampler::{
    self, GuidanceMode, GuidanceSettings, PromptEmbeddings, SampleError, SampleSettings,
    ADAPTIVE_RULE, CACHED_STEP_SCALE, FASTVMT_MOVING_THRESHOLD,
};

pub const CLASS: NodeClass = NodeClass {
    descriptor: schema,
    create: || into_instance(GradientCachedSampler),
};

fn schema() -> NodeDescriptor {
    NodeDescriptor::new("GradientCachedSampler", "FastVMT/sampling", "Generates a video showing the prompt and moving like the reference: flow-matching sampling with classifier-free guidance, and attention-motion-flow guidance on the first steps (ditflow: dense, every gradient real; fastvmt: local AMF + gradient reuse; adaptive: like fastvmt, and each guided step after the first starts on the previous step's last real gradient, one backward pass fewer per such step).")
        .display_name("Gradient-Cached Motion Sampler")
        .version(1)
        .inputs(vec![
            InputSpec::new("model", ValueType::Model).build(),
            InputSpec::new("conditioning", ValueType::Conditioning).build(),
            InputSpec::new("reference", ValueType::Video).optional().tooltip("the video whose motion is transferred (or give reference_latent)").build(),
            InputSpec::new("reference_latent", ValueType::Latent).optional().tooltip("the reference as a latent of this model (instead of reference)").build(),
            InputSpec::new("seed", ValueType::Int).default(Literal::Int(0)).range(0.0, 9.0e15, 1.0).build(),
            InputSpec::new("steps", ValueType::Int).default(Literal::Int(50)).range(1.0, 1000.0, 1.0).tooltip("denoising steps").build(),
            InputSpec::new("cfg", ValueType::Float).default(Literal::Float(5.0)).range(1.0, 30.0, 0.1).tooltip("classifier-free guidance scale (1 = off)").build(),
            InputSpec::new("denoise", ValueType::Float).default(Literal::Float(1.0)).range(0.05, 1.0, 0.01).tooltip("1 = from noise; below 1 starts from the reference noised to this level (SDEdit; leaks the reference's look)").build(),
            InputSpec::new("mode", ValueType::Choice).choices(&GuidanceMode::NAMES).default(Literal::String("fastvmt".into())).build(),
            InputSpec::new("guided_fraction", ValueType::Float).default(Literal::Float(0.2)).range(0.0, 1.0, 0.05).tooltip("fraction of the steps (the first ones) that are guided").build(),
            InputSpec::new("inner_steps", ValueType::Int).default(Literal::Int(10)).range(1.0, 100.0, 1.0).tooltip("optimisation steps on the latent per guided step").build(),
            InputSpec::new("reuse_interval", ValueType::Int).default(Literal::Int(3)).range(1.0, 100.0, 1.0).tooltip("fastvmt: a real gradient every n inner steps (0, 3, 6, 9 for 3), the cached one otherwise; adaptive: the same, its first real gradient of a guided step after the first at inner step n").build(),
            InputSpec::new("learning_rate", ValueType::Float).default(Literal::Float(-1.0)).range(-1.0, 10.0, 0.0005).tooltip("AdamW learning rate at the first guided step (decays to 0.7x); -1 = the bundle's default").build(),
            InputSpec::new("motion_mask", ValueType::Float).default(Literal::Float(FASTVMT_MOVING_THRESHOLD as f64)).range(0.0, 100.0, 0.1).tooltip("fastvmt/adaptive: match the motion only where the reference moves more than this many tokens (DiTFlow's mask; ditflow always uses 0.5); 0 = everywhere, static background included").build(),
            InputSpec::new("reference_noise", ValueType::Float).default(Literal::Float(0.5)).range(0.0, 1.0, 0.05).tooltip("the reference AMF is read at this fraction of the current noise level (0.5 measured best on the shipped model; FastVMT uses 1)").build(),
        ])
        .outputs(&[("video", ValueType::Video), ("latent", ValueType::Latent), ("report", ValueType::String)])
}

struct GradientCachedSampler;

fn sample_error(e: SampleError) -> NodeError {
    match e {
        SampleError::Model(ModelError::Cancelled) => NodeError::cancelled(),
        SampleError::Input { input, message } => NodeError::input(input, message),
        other => NodeError::new(NodeErrorKind::Model, other.to_string()),
    }
}

impl Node for GradientCachedSampler {
    fn run(&mut self, inputs: &Inputs, host: &Host<'_, '_>) -> Result<Vec<Value>, NodeError> {
        let handle = inputs.opaque::<ModelHandle>("model")?;
        let cond = inputs.opaque::<Conditioning>("conditioning")?;
        if !std::sync::Arc::ptr_eq(&cond.model, &handle.model) {
            return Err(NodeError::input(
                "conditioning",
                "was encoded with another model: connect EncodePrompt to the same model",
            ));
        }
        let model = &handle.model;
        let m = model.manifest();
        if !m.is_pixel_space() {
            // The node's VIDEO output (and a VIDEO reference) need the bundle's VAE.
            return Err(NodeError::input(
                "model",
                format!(
                    "bundle '{}' has a '{}' latent and ships no VAE, so this node cannot make its video; such bundles run through the library (bench/wan)",
                    m.name, m.latent.kind
                ),
            ));
        }
        let (shape, latent, fps) = match (inputs.has("reference"), inputs.has("reference_latent")) {
            (true, false) => {
                let v = inputs.video("reference")?;
                if v.channels != 3 || v.data.len() != v.expected_len() {
                    return Err(NodeError::input(
                        "reference",
                        format!(
                            "expected RGB frames, got {} channels / {} values",
                            v.channels,
                            v.data.len()
                        ),
                    ));
                }
                let (f, h, w) = (v.frames as usize, v.height as usize, v.width as usize);
                (
                    [1, 3, f, h, w],
                    sampler::video_to_latent(f, h, w, &v.data),
                    v.fps,
                )
            }
            (false, true) => {
                let l = inputs.latent("reference_latent")?;
                if l.space.as_str() != m.name {
                    return Err(NodeError::input(
                        "reference_latent",
                        format!("is a latent of '{}', this model is '{}'", l.space, m.name),
                    ));
                }
                let s: Vec<usize> = l.tensor.shape.iter().map(|&d| d as usize).collect();
                if s.len() != 5 || l.tensor.data.len() != l.tensor.numel() {
                    return Err(NodeError::input(
                        "reference_latent",
                        format!("shape {s:?} is not [1, C, F, H, W]"),
                    ));
                }
                (
                    [s[0], s[1], s[2], s[3], s[4]],
                    l.tensor.data.to_vec(),
                    l.fps,
                )
            }
            (true, true) => {
                return Err(NodeError::input(
                    "reference",
                    "connect either reference or reference_latent, not both",
                ))
            }
            (false, false) => {
                return Err(NodeError::input(
                    "reference",
                    "is required (or connect reference_latent)",
                ))
            }
        };
        let mode_name = inputs.string("mode")?;
        let mode = GuidanceMode::parse(mode_name)
            .ok_or_else(|| NodeError::input("mode", format!("unknown mode '{mode_name}'")))?;
        let lr = match inputs.float("learning_rate")? {
            v if v <= 0.0 => m.default_f64("guidance_lr", 0.015),
            v => v,
        } as f32;
        let settings = SampleSettings {
            seed: inputs.int("seed")? as u64,
            steps: inputs.int("steps")? as usize,
            cfg: inputs.float("cfg")? as f32,
            denoise: inputs.float("denoise")? as f32,
            latents: Default::default(),
            guidance: GuidanceSettings {
                mode,
                fraction: inputs.float("guided_fraction")? as f32,
                inner_steps: inputs.int("inner_steps")?.max(1) as usize,
                reuse_interval: inputs.int("reuse_interval")?.max(1) as usize,
                cached_step_scale: CACHED_STEP_SCALE,
                lr,
                lr_end_ratio: 0.7,
                weight_decay: 0.01,
                reference_noise_scale: inputs.float("reference_noise")? as f32,
                amf: handle.amf.clone(),
                adaptive: ADAPTIVE_RULE,
                moving_threshold: match inputs.float("motion_mask")? {
                    v if v > 0.0 => Some(v as f32),
                    _ => None,
                },
                fused_step: true,
                device_reference: true,
            },
        };
        let prompts = PromptEmbeddings {
            positive: &cond.positive_emb,
            negative: &cond.negative_emb,
        };
        let cancel = || host.is_cancelled();
        let mut progress = |p: sampler::Progress<'_>| host.progress(p.step, p.total, p.message);
        let out = sampler::sample(
            model,
            (&shape, &latent),
            &prompts,
            &settings,
            &mut progress,
            &cancel,
        )
        .map_err(sample_error)?;
        let s = &out.stats;
        if let Some(why) = &s.stopped_on_nan {
            host.warn(why);
        }
        host.info(&format!(
            "{mode_name}: {:.1} s, {} denoiser passes, {} real forward / {} real backward guidance passes, {} cached-gradient steps, AMF loss {} -> {}",
            s.wall_s,
            s.denoiser_passes,
            s.real_forward,
            s.real_backward,
            s.cached_steps,
            s.first_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
            s.final_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
        ));
        let [_, _, f, h, w] = shape;
        let frames = sampler::latent_to_video(f, h, w, &out.latent);
        let video = Video {
            frames: f as u32,
            height: h as u32,
            width: w as u32,
            channels: 3,
            fps,
            data: RVec::from(frames),
        };
        let latent = Latent {
            tensor: Tensor {
                shape: shape.iter().map(|&d| d as u64).collect(),
                data: RVec::from(out.latent),
            },
            fps,
            space: m.name.as_str().into(),
        };
        let mut report = serde_json::to_value(s).unwrap_or_default();
        report["mode"] = mode_name.into();
        Ok(vec![
            Value::Video(RArc::new(video)),
            Value::Latent(RArc::new(latent)),
            Value::String(report.to_string().into()),
        ])
    }
}
