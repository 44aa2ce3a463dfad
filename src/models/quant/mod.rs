//! Weight formats that take less GPU memory than bf16: float8 e4m3 with per-row scales ([`fp8`]),
//! quantized at load or read pre-quantized, and GGUF files with GGML block formats ([`gguf`]).
//! Both are `VarBuilder` backends, so the model code only sees [`crate::models::nn::linear::Linear`];
//! [`ggml`] makes GGML blocks without a file (random, or quantized on the host) for benchmarks.

pub mod fp8;
pub mod ggml;
pub mod gguf;

/// How a component's Linear weights are held on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// As stored (bf16 / the compute dtype); pre-quantized fp8 files stay fp8.
    #[default]
    Native,
    /// Quantize the large Linear weights to float8 e4m3 at load.
    Fp8,
}

/// The transformer's Linear layers quantized by [`WeightFormat::Fp8`]: those of the 60 blocks (~99 % of
/// the weights). The input/output projections and the timestep embedder stay in the compute dtype.
pub fn transformer_fp8_select(module: &str) -> bool {
    module.starts_with("transformer_blocks.")
}

/// The text encoder's Linear layers quantized by [`WeightFormat::Fp8`]: the language model's decoder
/// layers. The vision tower (0.7 B, and sensitive) and the embeddings stay in the compute dtype.
pub fn text_encoder_fp8_select(module: &str) -> bool {
    module.starts_with("model.language_model.layers.") || module.starts_with("model.layers.")
}
