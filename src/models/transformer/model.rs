//! `QwenImageTransformer2DModel`: input projections, the dual-stream blocks, `norm_out` and `proj_out`.
//!
//! Port of diffusers 0.42.1 `models/transformers/transformer_qwenimage.py` (`QwenImageTransformer2DModel`)
//! without guidance embeddings, ControlNet residuals, LoRA scaling or the Layered variant.
//!
//! Checkpoint format (diffusers `transformer/` folder): `img_in`, `txt_norm.weight`, `txt_in`,
//! `time_text_embed.timestep_embedder.linear_{1,2}`, `transformer_blocks.{i}.*` (see [`super::block`]),
//! `norm_out.linear`, `proj_out`; weights `[out, in]`, every Linear with a bias.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::block::{BlockInputs, QwenImageTransformerBlock};
use super::config::TransformerConfig;
use super::embed::{QwenEmbedRope, QwenTimestepProjEmbeddings};
use crate::error::UserError;
use crate::models::lora::{AdapterReport, LoraBackend, LoraFile, LoraMerge};
use crate::models::nn::fused::{self, PerToken, ShiftScale};
use crate::models::nn::linear::{linear, Linear};
use crate::models::nn::norm::RmsNorm;
use crate::models::offload::{self, HostBlock, OffloadOptions, OffloadStats, Recorder, StreamedBlocks};
use crate::models::quant::fp8::Fp8Quantizer;
use crate::models::quant::gguf::GgufWeights;
use crate::models::quant::{transformer_fp8_select, WeightFormat};
use crate::models::weights::{read_config, ComponentWeights};

/// Where the transformer's weights come from and how they are held (see [`QwenImageTransformer2DModel::load_with`]).
#[derive(Debug, Clone)]
pub struct TransformerWeights {
    /// LoRAs merged at load (bf16 / f32 weights only).
    pub loras: Vec<LoraFile>,
    /// Refuse LoRA keys that adapt nothing.
    pub lora_strict: bool,
    /// Quantize the blocks' Linear weights at load.
    pub format: WeightFormat,
    /// A single `.safetensors` (bf16, or pre-quantized "scaled fp8") or `.gguf` file instead of the
    /// folder's weights; the config still comes from the folder.
    pub file: Option<std::path::PathBuf>,
    /// Keep the blocks in host memory and stream them to the device (see [`crate::models::offload`]).
    pub offload: Option<OffloadOptions>,
}

impl Default for TransformerWeights {
    fn default() -> Self {
        Self {
            loras: Vec::new(),
            lora_strict: true,
            format: WeightFormat::Native,
            file: None,
            offload: None,
        }
    }
}

/// eps of `txt_norm` (RMSNorm) and of `norm_out`'s LayerNorm.
pub const MODEL_NORM_EPS: f64 = 1e-6;

/// `norm_out = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)`:
/// `LN(x) · (1 + scale) + shift` with `[scale | shift] = linear(SiLU(temb))` (scale first), one fused
/// op on CUDA in bf16.
#[derive(Debug, Clone)]
struct AdaLayerNormContinuous {
    linear: Linear,
}

impl AdaLayerNormContinuous {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear: linear(dim, 2 * dim, vb.pp("linear"))?,
        })
    }

    /// `x: [B, S, dim]`, `temb_act = SiLU(temb): [Bt, dim]`.
    fn forward(&self, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        let emb = self.linear.forward(temb_act)?; // [Bt, 2·dim]
        let chunks = emb.chunk(2, 1)?;
        let (scale, shift) = (&chunks[0], &chunks[1]);
        fused::layernorm_modulate(x, MODEL_NORM_EPS, PerToken::All(ShiftScale { shift, scale }))
    }
}

/// Intermediate tensors of one forward call (names as in the golden files' `dbg.*`).
#[derive(Debug, Clone)]
pub struct Intermediates {
    /// `time_text_embed` output, `[Bt, dim]` (`[2·Bt, dim]` with `zero_cond_t`: t rows, then t = 0 rows).
    pub temb: Tensor,
    pub txt_in: Tensor,
    pub img_in: Tensor,
    pub block0_img: Tensor,
    pub block0_txt: Tensor,
    pub norm_out: Tensor,
}

/// The dual-stream blocks: on the device, or in host memory and streamed through device slots.
#[derive(Debug, Clone)]
enum Blocks {
    Resident(Vec<QwenImageTransformerBlock>),
    Streamed(Arc<StreamedBlocks<QwenImageTransformerBlock>>),
}

/// The MMDiT denoiser of Qwen-Image(-Edit).
#[derive(Debug, Clone)]
pub struct QwenImageTransformer2DModel {
    cfg: TransformerConfig,
    img_in: Linear,
    txt_norm: RmsNorm,
    txt_in: Linear,
    time_text_embed: QwenTimestepProjEmbeddings,
    pos_embed: QwenEmbedRope,
    transformer_blocks: Blocks,
    norm_out: AdaLayerNormContinuous,
    proj_out: Linear,
    dtype: DType,
    device: Device,
    attn_chunk_elements: Option<usize>,
}

impl QwenImageTransformer2DModel {
    /// Loads the diffusers `transformer/` folder `dir` (config.json + one safetensors file or shards
    /// listed by `*.safetensors.index.json`) in `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> anyhow::Result<Self> {
        Ok(Self::load_with(dir, dtype, device, &TransformerWeights::default())?.0)
    }

    /// [`Self::load`] with the LoRAs `loras` merged into the weights (see [`crate::models::lora`]);
    /// `strict` refuses LoRA keys that adapt nothing. Returns what was merged from each file.
    pub fn load_with_loras(
        dir: &Path,
        dtype: DType,
        device: &Device,
        loras: &[LoraFile],
        strict: bool,
    ) -> anyhow::Result<(Self, Vec<AdapterReport>)> {
        let opts = TransformerWeights {
            loras: loras.to_vec(),
            lora_strict: strict,
            ..Default::default()
        };
        Self::load_with(dir, dtype, device, &opts)
    }

    /// Loads the transformer with the config of `dir` and the weights `opts` names (the folder's, or a
    /// single safetensors / GGUF file), LoRAs merged, in the weight format asked for.
    pub fn load_with(
        dir: &Path,
        dtype: DType,
        device: &Device,
        opts: &TransformerWeights,
    ) -> anyhow::Result<(Self, Vec<AdapterReport>)> {
        let cfg: TransformerConfig = read_config(dir).map_err(|e| UserError::model_missing(format!("{e:#}")))?;
        if let Err(why) = cfg.validate() {
            return Err(UserError::model_missing(format!(
                "unsupported transformer config {}: {why}",
                dir.join("config.json").display()
            ))
            .into());
        }
        let gguf = opts
            .file
            .as_ref()
            .is_some_and(|f| f.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")));
        let mut merge = None;
        let base: Box<dyn SimpleBackend> =
            if gguf {
                let file = opts.file.as_ref().expect("checked above");
                if !opts.loras.is_empty() {
                    return Err(
                        UserError::bad_input("LoRAs cannot be merged into GGUF-quantized weights")
                            .with_hint(
                                "use the bf16 transformer with `--weights fp8` to merge LoRAs and still save memory",
                            )
                            .into(),
                    );
                }
                let w = GgufWeights::open(file).map_err(|e| UserError::model_missing(format!("{e:#}")))?;
                if let Some(arch) = w.architecture().filter(|a| !a.starts_with("qwen_image")) {
                    return Err(UserError::bad_input(format!(
                        "{} is a GGUF file of `{arch}`, not of a Qwen-Image transformer",
                        file.display()
                    ))
                    .into());
                }
                Box::new(w)
            } else {
                let weights = match &opts.file {
                    Some(file) => ComponentWeights::open_file(file),
                    None => ComponentWeights::open(dir),
                }
                .map_err(|e| UserError::model_missing(format!("cannot open the transformer weights: {e}")))?;
                if opts.loras.is_empty() {
                    Box::new(weights)
                } else {
                    if weights.has_fp8_scales() {
                        return Err(UserError::bad_input("LoRAs cannot be merged into pre-quantized fp8 weights")
                        .with_hint("use the bf16 transformer with `--weights fp8` to merge LoRAs and still save memory")
                        .into());
                    }
                    let m = Arc::new(LoraMerge::new(&opts.loras, &weights, opts.lora_strict)?);
                    merge = Some(m.clone());
                    Box::new(LoraBackend::new(weights, m))
                }
            };
        let backend: Box<dyn SimpleBackend> = match opts.format {
            WeightFormat::Native => base,
            WeightFormat::Fp8 => Box::new(Fp8Quantizer::new(base, transformer_fp8_select)),
        };
        let model = match opts.offload {
            Some(o) => Self::new_streamed(&cfg, backend, dtype, device, o),
            None => Self::new(&cfg, VarBuilder::from_backend(backend, dtype, device.clone())),
        }
        .map_err(classify_load_error)?;
        let Some(merge) = merge else {
            return Ok((model, Vec::new()));
        };
        let unapplied = merge.unapplied();
        if !unapplied.is_empty() {
            anyhow::bail!(
                "{} LoRA-adapted weight(s) are not used by the transformer, e.g. {}",
                unapplied.len(),
                unapplied[0]
            );
        }
        Ok((model, merge.reports.clone()))
    }

    /// Builds the model from `vb` (root of the transformer's tensors).
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        if let Err(why) = cfg.validate() {
            candle_core::bail!("unsupported transformer config: {why}");
        }
        let blocks_vb = vb.pp("transformer_blocks");
        let transformer_blocks = (0..cfg.num_layers)
            .map(|i| QwenImageTransformerBlock::new(cfg, blocks_vb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Self::assemble(cfg, vb, Blocks::Resident(transformer_blocks))
    }

    /// Builds the model from the weights of `backend` with the blocks kept in host memory and streamed
    /// to `device` (`opts.prefetch` blocks ahead); the other layers (input/output projections, the
    /// timestep embedder: ~0.1 % of the weights) stay on the device. Each block is built on the device
    /// once, in order, its tensors copied to host memory and the device copy freed, so loading holds one
    /// block at a time. Same outputs, bit for bit, as [`Self::new`] over the same weights.
    pub fn new_streamed(
        cfg: &TransformerConfig,
        backend: Box<dyn SimpleBackend>,
        dtype: DType,
        device: &Device,
        opts: OffloadOptions,
    ) -> Result<Self> {
        if let Err(why) = cfg.validate() {
            candle_core::bail!("unsupported transformer config: {why}");
        }
        let (backend, recording) = Recorder::wrap(backend);
        let vb = VarBuilder::from_backend(backend, dtype, device.clone());
        let mut host = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let prefix = format!("transformer_blocks.{i}");
            let tensors = recording.capture(&prefix, || {
                QwenImageTransformerBlock::new(cfg, vb.pp(&prefix)).map(drop)
            })?;
            host.push(HostBlock::pack(tensors, device, opts.pinned)?);
        }
        let block_cfg = cfg.clone();
        let blocks = StreamedBlocks::new(
            host,
            Box::new(move |vb| QwenImageTransformerBlock::new(&block_cfg, vb)),
            dtype,
            device,
            opts,
        )?;
        Self::assemble(cfg, vb, Blocks::Streamed(Arc::new(blocks)))
    }

    /// The layers around the blocks (built after them, in the order of the checkpoint's modules).
    fn assemble(cfg: &TransformerConfig, vb: VarBuilder, transformer_blocks: Blocks) -> Result<Self> {
        let dim = cfg.inner_dim();
        Ok(Self {
            img_in: linear(cfg.in_channels, dim, vb.pp("img_in"))?,
            txt_norm: RmsNorm::new(cfg.joint_attention_dim, MODEL_NORM_EPS, vb.pp("txt_norm"))?,
            txt_in: linear(cfg.joint_attention_dim, dim, vb.pp("txt_in"))?,
            time_text_embed: QwenTimestepProjEmbeddings::new(dim, vb.pp("time_text_embed"))?,
            pos_embed: QwenEmbedRope::new(cfg.axes_dims_rope, vb.device())?,
            transformer_blocks,
            norm_out: AdaLayerNormContinuous::new(dim, vb.pp("norm_out"))?,
            proj_out: linear(dim, cfg.proj_out_dim(), vb.pp("proj_out"))?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            cfg: cfg.clone(),
            attn_chunk_elements: None,
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the blocks are streamed from host memory.
    pub fn is_streamed(&self) -> bool {
        matches!(self.transformer_blocks, Blocks::Streamed(_))
    }

    /// What the last forward streamed (`None` when the blocks are resident); waits for its copies.
    pub fn offload_stats(&self) -> Result<Option<OffloadStats>> {
        match &self.transformer_blocks {
            Blocks::Streamed(s) => s.stats().map(Some),
            Blocks::Resident(_) => Ok(None),
        }
    }

    /// Blocks copied ahead of use when streamed (0: no overlap of copies and compute); no-op otherwise.
    pub fn set_offload_prefetch(&self, prefetch: usize) {
        if let Blocks::Streamed(s) = &self.transformer_blocks {
            s.set_prefetch(prefetch);
        }
    }

    /// Overrides the bound on one attention score block (elements of `[B, H, q_chunk, S_kv]`); `None`
    /// restores the shared default. For tests of the chunked path and for memory tuning.
    pub fn set_attention_chunk_elements(&mut self, elements: Option<usize>) {
        self.attn_chunk_elements = elements;
    }

    /// One denoiser evaluation.
    ///
    /// - `hidden_states: [B, S_img, in_channels]`: packed noise tokens, then the reference tokens.
    /// - `encoder_hidden_states: [B, S_txt, joint_attention_dim]`: prompt embeddings.
    /// - `encoder_hidden_states_mask: [B, S_txt]`: 1 = attend, 0 = padding (image keys are always kept).
    /// - `timestep: [B]` or `[1]`: σ ∈ [0, 1] (the scheduler's t already divided by 1000).
    /// - `img_shapes`: `(frames, h, w)` packed grid of each image in token order, noise first.
    ///
    /// Returns `[B, S_img, patch_size² · out_channels]` for all image tokens (noise first).
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        encoder_hidden_states_mask: Option<&Tensor>,
        timestep: &Tensor,
        img_shapes: &[(usize, usize, usize)],
    ) -> Result<Tensor> {
        self.run(
            hidden_states,
            encoder_hidden_states,
            encoder_hidden_states_mask,
            timestep,
            img_shapes,
            false,
        )
        .map(|(out, _)| out)
    }

    /// [`Self::forward`] that also returns the intermediates the parity tests compare.
    pub fn forward_with_intermediates(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        encoder_hidden_states_mask: Option<&Tensor>,
        timestep: &Tensor,
        img_shapes: &[(usize, usize, usize)],
    ) -> Result<(Tensor, Intermediates)> {
        let (out, dbg) = self.run(
            hidden_states,
            encoder_hidden_states,
            encoder_hidden_states_mask,
            timestep,
            img_shapes,
            true,
        )?;
        match dbg {
            Some(dbg) => Ok((out, dbg)),
            None => candle_core::bail!("intermediates were not recorded"),
        }
    }

    /// Checks the inputs against the config and each other; returns `(B, S_img, S_txt, noise tokens)`.
    fn check_inputs(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        mask: Option<&Tensor>,
        timestep: &Tensor,
        img_shapes: &[(usize, usize, usize)],
    ) -> Result<(usize, usize, usize, usize)> {
        let cfg = &self.cfg;
        let (b, s_img, c_img) = match hidden_states.dims() {
            &[b, s, c] => (b, s, c),
            d => candle_core::bail!("hidden_states must be [B, S_img, {}], got {d:?}", cfg.in_channels),
        };
        if c_img != cfg.in_channels {
            candle_core::bail!(
                "hidden_states has {c_img} features per token, the model expects {}",
                cfg.in_channels
            );
        }
        let (bt, s_txt, c_txt) = match encoder_hidden_states.dims() {
            &[b, s, c] => (b, s, c),
            d => candle_core::bail!(
                "encoder_hidden_states must be [B, S_txt, {}], got {d:?}",
                cfg.joint_attention_dim
            ),
        };
        if bt != b || c_txt != cfg.joint_attention_dim {
            candle_core::bail!(
                "encoder_hidden_states {:?} does not match hidden_states {:?} (expected [{b}, S_txt, {}])",
                encoder_hidden_states.dims(),
                hidden_states.dims(),
                cfg.joint_attention_dim
            );
        }
        if s_txt == 0 {
            candle_core::bail!("encoder_hidden_states has no text tokens");
        }
        if let Some(m) = mask {
            if m.dims() != [b, s_txt] {
                candle_core::bail!("encoder_hidden_states_mask must be [{b}, {s_txt}], got {:?}", m.dims());
            }
        }
        match timestep.dims() {
            &[n] if n == b || n == 1 => {}
            d => candle_core::bail!("timestep must be [{b}] or [1], got {d:?}"),
        }
        if img_shapes.is_empty() {
            candle_core::bail!("img_shapes is empty (it must list the noise grid first)");
        }
        if let Some((i, s)) = img_shapes
            .iter()
            .enumerate()
            .find(|(_, &(f, h, w))| f == 0 || h == 0 || w == 0)
        {
            candle_core::bail!("img_shapes[{i}] = {s:?} has an empty axis");
        }
        let total: usize = img_shapes.iter().map(|&(f, h, w)| f * h * w).sum();
        if total != s_img {
            candle_core::bail!(
                "img_shapes {img_shapes:?} describe {total} image tokens, but hidden_states has {s_img}"
            );
        }
        let (f0, h0, w0) = img_shapes[0];
        Ok((b, s_img, s_txt, f0 * h0 * w0))
    }

    fn run(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        encoder_hidden_states_mask: Option<&Tensor>,
        timestep: &Tensor,
        img_shapes: &[(usize, usize, usize)],
        record: bool,
    ) -> Result<(Tensor, Option<Intermediates>)> {
        let (b, s_img, s_txt, noise_tokens) = self.check_inputs(
            hidden_states,
            encoder_hidden_states,
            encoder_hidden_states_mask,
            timestep,
            img_shapes,
        )?;
        let dtype = self.dtype;

        // 1. Input projections: [B, S_img, dim] and [B, S_txt, dim].
        let img = self.img_in.forward(&hidden_states.to_dtype(dtype)?)?;
        let txt = self
            .txt_in
            .forward(&self.txt_norm.forward(&encoder_hidden_states.to_dtype(dtype)?)?)?;

        // 2. Timestep embedding; with zero_cond_t the batch is [t, 0·t].
        let t = timestep.to_dtype(dtype)?;
        let t = if self.cfg.zero_cond_t {
            Tensor::cat(&[&t, &t.zeros_like()?], 0)?
        } else {
            t
        };
        let temb = self.time_text_embed.forward(&t)?; // [Bt(·2), dim]
        let temb_act = temb.silu()?;
        let bt = timestep.dim(0)?;
        let temb_txt = if self.cfg.zero_cond_t {
            temb_act.narrow(0, 0, bt)?
        } else {
            temb_act.clone()
        };

        // 3. RoPE tables of this call's tokens.
        let rope = self.pos_embed.forward(img_shapes, s_txt)?;

        // 4. Joint key mask, text first: [B, S_txt + S_img].
        let key_mask = match encoder_hidden_states_mask {
            Some(m) => {
                let txt_keep = m.to_dtype(DType::F32)?.ne(0f64)?.to_dtype(DType::F32)?;
                let img_keep = Tensor::ones((b, s_img), DType::F32, &self.device)?;
                Some(Tensor::cat(&[txt_keep, img_keep], 1)?)
            }
            None => None,
        };

        // 5. Dual-stream blocks.
        let inputs = BlockInputs {
            temb_img: &temb_act,
            temb_txt: &temb_txt,
            rope: &rope,
            key_mask: key_mask.as_ref(),
            noise_tokens: if self.cfg.zero_cond_t { Some(noise_tokens) } else { None },
            attn_chunk_elements: self.attn_chunk_elements,
        };
        let (img_in, txt_in) = (img.clone(), txt.clone());
        let mut img = img;
        let mut txt = txt;
        let mut block0 = None;
        let mut step = |i: usize, block: &QwenImageTransformerBlock| -> Result<()> {
            let out = block.forward(&img, &txt, &inputs)?;
            img = out.img;
            txt = out.txt;
            if record && i == 0 {
                block0 = Some((img.clone(), txt.clone()));
            }
            offload::watch::sample();
            Ok(())
        };
        match &self.transformer_blocks {
            Blocks::Resident(blocks) => {
                for (i, block) in blocks.iter().enumerate() {
                    step(i, block)?;
                }
            }
            Blocks::Streamed(blocks) => blocks.run(&mut step)?,
        }

        // 6. Output norm (modulated by t only) and projection.
        let normed = self.norm_out.forward(&img, &temb_txt)?;
        let out = self.proj_out.forward(&normed)?; // [B, S_img, patch² · out_channels]

        let dbg = if record {
            let (block0_img, block0_txt) = block0.unwrap_or_else(|| (img_in.clone(), txt_in.clone()));
            Some(Intermediates {
                temb,
                txt_in,
                img_in,
                block0_img,
                block0_txt,
                norm_out: normed,
            })
        } else {
            None
        };
        Ok((out, dbg))
    }
}

/// Sorts an error from building the model: GPU failures keep their class (exit 5), everything else
/// (a missing or mis-shaped tensor, named with its shard by the weight loader) means the weights are
/// incomplete (exit 4).
fn classify_load_error(e: candle_core::Error) -> anyhow::Error {
    let msg = without_backtrace(&e).to_string();
    if is_device_failure(&e) {
        UserError::device(format!("the GPU failed while loading the transformer: {msg}")).into()
    } else {
        UserError::model_missing(format!("incomplete transformer weights: {msg}")).into()
    }
}

fn without_backtrace(e: &candle_core::Error) -> &candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(inner),
        e => e,
    }
}

fn is_device_failure(e: &candle_core::Error) -> bool {
    use candle_core::Error as E;
    match e {
        E::Cuda(_) => true,
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            is_device_failure(inner)
        }
        _ => false,
    }
}
