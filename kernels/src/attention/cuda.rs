//! CUDA back end of the fused attention (see the parent module for the definition).
