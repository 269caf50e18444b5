//! Runs whose tensors stay where the session computes: ONNX Runtime's IoBinding with inputs and
//! outputs in the CUDA provider's memory (issue #7: latents, text, RoPE tables, reference fields
//! and gradients live on the device for a whole sampling job; the sampler updates them with
//! `fastvmt_kernels::latent`). On a CPU model the same entries bind host memory, so the route
//! is tested in CI too.
//!
//! Why owned tensors everywhere: ort binds a *borrowed* value by first cloning it through a
//! private identity session, which never returned here (hung on CPU and CUDA alike). Tensors
//! allocated by a session's allocator ([`DitModel::device_tensor`]) and owned host copies of the
//! small inputs are bound as they are.

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use std::sync::MutexGuard;

use ort::session::{IoBinding, RunOptions, Session};
use ort::value::{DynTensorValueType, Tensor, TensorElementType};

use super::dit::{CancelCheck, Device, DitModel, Graph, Input, Latent, ModelError, Rope};
use crate::runtime::amf_ops;

/// An f32 tensor in the memory a model's sessions compute in: the CUDA provider's device 0 on a
/// CUDA model, host memory on a CPU one. Allocated from the sessions' allocator (ONNX Runtime's
/// shared arena where it is on), freed on drop.
pub struct DeviceTensor {
    value: Tensor<f32>,
    shape: Vec<usize>,
}

impl DeviceTensor {
    /// The data pointer (device memory on a CUDA model): for `fastvmt_kernels::latent`'s raw
    /// entries, which must not outlive `self`.
    pub fn ptr(&self) -> u64 {
        self.value.data_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, where they are in host memory (a CPU model's tensors); `None` in device
    /// memory.
    pub fn host(&self) -> Option<&[f32]> {
        if !self.value.memory_info().is_cpu_accessible() {
            return None;
        }
        Some(self.value.extract_tensor().1)
    }

    /// [`Self::host`], mutable.
    pub fn host_mut(&mut self) -> Option<&mut [f32]> {
        if !self.value.memory_info().is_cpu_accessible() {
            return None;
        }
        Some(self.value.extract_tensor_mut().1)
    }
}

/// `guidance_step`'s reference AMF field `[pairs, S, 2]`: in host memory, or in device memory
/// where the AMF operator's CUDA variant reads it in place (`amf_ops::reference_on_device`).
pub enum FieldIn<'a> {
    Host(&'a [f32]),
    Device(&'a DeviceTensor),
}

/// The inputs of DiT calls that stay the same for a whole job, in device memory.
pub struct DeviceConditioning<'a> {
    /// `[B, L, D]` text embeddings (B = the call's batch).
    pub text: &'a DeviceTensor,
    pub rope_cos: &'a DeviceTensor,
    pub rope_sin: &'a DeviceTensor,
    /// The token grid (frames, rows, cols) the RoPE tables are for.
    pub grid: (usize, usize, usize),
}

/// Runs a bound session and waits until its outputs are written.
fn run_synchronised<'b>(
    graph: &Graph,
    session: &'b mut Session,
    binding: &'b IoBinding,
    options: &RunOptions,
) -> Result<ort::session::SessionOutputs<'b>, ModelError> {
    let outs = session
        .run_binding_with_options(binding, options)
        .map_err(|e| graph.error(e.to_string()))?;
    binding
        .synchronize_outputs()
        .map_err(|e| graph.error(e.to_string()))?;
    Ok(outs)
}

impl DitModel {
    /// The memory the sessions compute in (see [`DeviceTensor`]).
    fn session_memory(&self) -> AllocationDevice<'static> {
        match self.device {
            Device::Cuda => AllocationDevice::CUDA,
            Device::Cpu => AllocationDevice::CPU,
        }
    }

    fn session_memory_info(&self) -> ort::Result<MemoryInfo<'static>> {
        // Device 0: the CUDA provider's device (ort's default, as `open_session` leaves it).
        MemoryInfo::new(
            self.session_memory(),
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
    }

    /// A new, uninitialised tensor of `shape` in the sessions' memory.
    pub fn device_tensor(&self, shape: &[usize]) -> Result<DeviceTensor, ModelError> {
        let onnx = |message: String| ModelError::Onnx {
            file: self.denoiser.file.clone(),
            message: format!("allocating a {shape:?} tensor: {message}"),
        };
        let info = self
            .session_memory_info()
            .map_err(|e| onnx(e.to_string()))?;
        let session = self
            .denoiser
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let allocator = Allocator::new(&session, info).map_err(|e| onnx(e.to_string()))?;
        let value =
            Tensor::<f32>::new(&allocator, shape.to_vec()).map_err(|e| onnx(e.to_string()))?;
        Ok(DeviceTensor {
            value,
            shape: shape.to_vec(),
        })
    }

    /// Binds `inputs`: device tensors as they are, host data as owned copies (ONNX Runtime
    /// uploads those; their bytes are counted).
    fn bind_inputs(
        &self,
        graph: &Graph,
        binding: &mut IoBinding,
        inputs: Vec<(&str, Input<'_>)>,
    ) -> Result<(), ModelError> {
        let onnx = |name: &str, e: ort::Error| ModelError::Onnx {
            file: graph.file.clone(),
            message: format!("input '{name}': {e}"),
        };
        for (name, input) in inputs {
            self.count_transfer(input.host_bytes(name));
            match input {
                Input::F32(shape, data) => Tensor::from_array((shape, data.to_vec()))
                    .and_then(|v| binding.bind_input(name, &v)),
                Input::I64(shape, data) => Tensor::from_array((shape, data.to_vec()))
                    .and_then(|v| binding.bind_input(name, &v)),
                Input::Device(t) => binding.bind_input(name, &t.value),
            }
            .map_err(|e| onnx(name, e))?;
        }
        Ok(())
    }

    /// The start of a bound run of `graph`: its run options, the locked session and a binding
    /// with `inputs` bound.
    fn start_bound<'g>(
        &self,
        graph: &'g Graph,
        inputs: Vec<(&str, Input<'_>)>,
        cancel: CancelCheck<'_>,
    ) -> Result<(RunOptions, MutexGuard<'g, Session>, IoBinding), ModelError> {
        if cancel() {
            return Err(ModelError::Cancelled);
        }
        let options = graph.run_options().map_err(|m| graph.error(m))?;
        let session = graph.session.lock().unwrap_or_else(|p| p.into_inner());
        let mut binding = session
            .create_binding()
            .map_err(|e| graph.error(e.to_string()))?;
        self.bind_inputs(graph, &mut binding, inputs)?;
        Ok((options, session, binding))
    }

    /// The DiT inputs of one call on device-resident `x` and conditioning (`t` from the host).
    fn device_dit_inputs<'a>(
        &self,
        x: &'a DeviceTensor,
        t: &'a [f32],
        cond: &DeviceConditioning<'a>,
    ) -> Result<Vec<(&'static str, Input<'a>)>, ModelError> {
        let batch = x.shape.first().copied().unwrap_or(0);
        self.text_shape_of(batch, cond.text.len())?;
        if t.len() != batch {
            return Err(ModelError::Shape(format!(
                "{} times for a batch of {batch}",
                t.len()
            )));
        }
        Ok(vec![
            ("x", Input::Device(x)),
            ("t", Input::F32(vec![t.len() as i64], t)),
            ("text", Input::Device(cond.text)),
            ("rope_cos", Input::Device(cond.rope_cos)),
            ("rope_sin", Input::Device(cond.rope_sin)),
        ])
    }

    /// One bound run of `graph`: `outputs` written into the given tensors, and the names of
    /// `host_outputs` read back into host memory.
    fn run_bound(
        &self,
        graph: &Graph,
        inputs: Vec<(&str, Input<'_>)>,
        outputs: Vec<(&str, &mut DeviceTensor)>,
        host_outputs: &[&str],
        cancel: CancelCheck<'_>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let onnx = |message: String| graph.error(message);
        let (options, mut session, mut binding) = self.start_bound(graph, inputs, cancel)?;
        for (name, out) in outputs {
            binding
                .bind_output(name, &mut out.value)
                .map_err(|e| onnx(format!("output '{name}': {e}")))?;
        }
        let host = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| onnx(e.to_string()))?;
        for name in host_outputs {
            binding
                .bind_output_to_device(*name, &host)
                .map_err(|e| onnx(format!("output '{name}': {e}")))?;
        }
        let read = Self::watching_cancel(&options, cancel, || {
            let outs = run_synchronised(graph, &mut session, &binding, &options)?;
            host_outputs
                .iter()
                .map(|name| {
                    let (_, data) = outs[*name]
                        .try_extract_tensor::<f32>()
                        .map_err(|e| onnx(format!("output '{name}': {e}")))?;
                    Ok(data.to_vec())
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        self.count_transfer(read.iter().map(|v| 4 * v.len()).sum());
        Ok(read)
    }

    /// [`DitModel::velocity`] with everything in device memory: `x [B,C,F,H,W]` in, the
    /// velocity written into `out` (same shape).
    pub fn velocity_on_device(
        &self,
        x: &DeviceTensor,
        t: &[f32],
        cond: &DeviceConditioning<'_>,
        out: &mut DeviceTensor,
        cancel: CancelCheck<'_>,
    ) -> Result<(), ModelError> {
        if out.shape != x.shape {
            return Err(ModelError::Shape(format!(
                "velocity buffer {:?} for a latent {:?}",
                out.shape, x.shape
            )));
        }
        let inputs = self.device_dit_inputs(x, t, cond)?;
        self.run_bound(&self.denoiser, inputs, vec![("velocity", out)], &[], cancel)?;
        Ok(())
    }

    /// [`DitModel::guidance_step`] with the latent, conditioning and gradient in device memory:
    /// the AMF loss (to the host) and dL/dx written into `dx` (the latent's shape).
    #[allow(clippy::too_many_arguments)]
    pub fn guidance_step_on_device(
        &self,
        x: &DeviceTensor,
        t: &[f32],
        cond: &DeviceConditioning<'_>,
        reference: FieldIn<'_>,
        config: &amf_ops::OpConfig,
        dx: &mut DeviceTensor,
        cancel: CancelCheck<'_>,
    ) -> Result<f32, ModelError> {
        let graph = self
            .guidance_step
            .as_ref()
            .ok_or(ModelError::MissingGraph("guidance_step"))?;
        if dx.shape != x.shape {
            return Err(ModelError::Shape(format!(
                "gradient buffer {:?} for a latent {:?}",
                dx.shape, x.shape
            )));
        }
        let s = cond.grid.1 * cond.grid.2;
        let len = match reference {
            FieldIn::Host(r) => r.len(),
            FieldIn::Device(r) => r.len(),
        };
        if s == 0 || !len.is_multiple_of(2 * s) {
            return Err(ModelError::Shape(format!(
                "reference AMF has {len} values, not a multiple of {s} tokens x 2"
            )));
        }
        if let FieldIn::Device(r) = reference {
            if r.shape() != [len / (2 * s), s, 2] {
                return Err(ModelError::Shape(format!(
                    "reference AMF tensor {:?}, expected [pairs, {s}, 2]",
                    r.shape()
                )));
            }
        }
        let encoded = config.encode();
        let mut inputs = self.device_dit_inputs(x, t, cond)?;
        inputs.push((
            "reference",
            match reference {
                FieldIn::Host(r) => Input::F32(vec![(len / (2 * s)) as i64, s as i64, 2], r),
                FieldIn::Device(r) => Input::Device(r),
            },
        ));
        inputs.push((
            "amf_config",
            Input::F32(vec![encoded.len() as i64], &encoded),
        ));
        let read = self.run_bound(graph, inputs, vec![("dx", dx)], &["loss"], cancel)?;
        Ok(read
            .first()
            .and_then(|l| l.first().copied())
            .unwrap_or(f32::NAN))
    }

    /// The guidance head with its Q/K left where the session computed them (IoBinding): in
    /// device memory on a CUDA model, host memory on a CPU one. `use_qk` borrows them as raw
    /// pointers to `len` f32 each (`[B, heads, tokens, head_dim]`, written and synchronised)
    /// and they are freed when this returns. On CUDA the reference AMF reads them in place
    /// instead of copying 2 x 4 bytes x `len` to the host and the converted halves back (issue
    /// #7: at Wan scale 400 MB each way per guided step).
    pub fn with_guidance_qk_on_device<R>(
        &self,
        x: &Latent<'_>,
        t: &[f32],
        text: &[f32],
        rope: &Rope,
        cancel: CancelCheck<'_>,
        use_qk: impl FnOnce(u64, u64, usize) -> R,
    ) -> Result<R, ModelError> {
        let ts = self.text_shape_of(x.shape[0], text.len())?;
        self.head_bound(Self::dit_inputs(x, t, text, rope, ts), cancel, use_qk)
    }

    /// [`Self::with_guidance_qk_on_device`] on a device-resident latent and conditioning.
    pub fn with_guidance_qk_of_device_latent<R>(
        &self,
        x: &DeviceTensor,
        t: &[f32],
        cond: &DeviceConditioning<'_>,
        cancel: CancelCheck<'_>,
        use_qk: impl FnOnce(u64, u64, usize) -> R,
    ) -> Result<R, ModelError> {
        let inputs = self.device_dit_inputs(x, t, cond)?;
        self.head_bound(inputs, cancel, use_qk)
    }

    fn head_bound<R>(
        &self,
        inputs: Vec<(&str, Input<'_>)>,
        cancel: CancelCheck<'_>,
        use_qk: impl FnOnce(u64, u64, usize) -> R,
    ) -> Result<R, ModelError> {
        let graph = self
            .guidance_head
            .as_ref()
            .ok_or(ModelError::MissingGraph("guidance_head"))?;
        let onnx = |message: String| graph.error(message);
        let (options, mut session, mut binding) = self.start_bound(graph, inputs, cancel)?;
        let memory = self.session_memory();
        let device = self
            .session_memory_info()
            .map_err(|e| onnx(e.to_string()))?;
        for name in ["q", "k"] {
            binding
                .bind_output_to_device(name, &device)
                .map_err(|e| onnx(format!("output '{name}': {e}")))?;
        }
        Self::watching_cancel(&options, cancel, || {
            let outs = run_synchronised(graph, &mut session, &binding, &options)?;
            let mut ptrs = [0u64; 2];
            let mut len = 0;
            for (slot, name) in ptrs.iter_mut().zip(["q", "k"]) {
                let value = outs[name]
                    .view()
                    .downcast::<DynTensorValueType>()
                    .map_err(|e| onnx(format!("output '{name}': {e}")))?;
                if *value.data_type() != TensorElementType::Float32 {
                    return Err(onnx(format!(
                        "output '{name}' is {}, expected f32",
                        value.data_type()
                    )));
                }
                let n: usize = value.shape().iter().map(|&d| d.max(0) as usize).product();
                if len != 0 && n != len {
                    return Err(onnx(format!(
                        "outputs q and k differ in size ({len} vs {n})"
                    )));
                }
                len = n;
                let placed = value.memory_info().allocation_device();
                if placed != memory {
                    return Err(onnx(format!(
                        "output '{name}' came back in {} memory, not {}",
                        placed.as_str(),
                        memory.as_str()
                    )));
                }
                *slot = value.data_ptr() as u64;
            }
            Ok(use_qk(ptrs[0], ptrs[1], len))
        })
    }
}
