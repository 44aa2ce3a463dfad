//! `QwenImageTransformerBlock`: one dual-stream (MMDiT) block with joint text+image attention.
//!
//! Port of `QwenImageTransformerBlock`, `QwenDoubleStreamAttnProcessor2_0` and `FeedForward(
//! activation_fn="gelu-approximate")` from diffusers 0.42.1 `models/transformers/transformer_qwenimage.py`.
//! "img" is the reference's `hidden_states` (image stream), "txt" its `encoder_hidden_states`.
//!
//! Keys under `transformer_blocks.{i}`: `img_mod.1`, `txt_mod.1` (Linear after SiLU), `attn.{to_q, to_k,
//! to_v, to_out.0, add_q_proj, add_k_proj, add_v_proj, to_add_out}`, `attn.{norm_q, norm_k, norm_added_q,
//! norm_added_k}.weight`, `{img,txt}_mlp.net.0.proj`, `{img,txt}_mlp.net.2`. The four LayerNorms have no
//! parameters.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::models::nn::linear::{linear, Linear};

use super::config::TransformerConfig;
use super::embed::{apply_rope, RopeFreqs};
use crate::models::nn::attention::{attention, attention_chunked, AttnMask};
use crate::models::nn::norm::{LayerNormNoAffine, RmsNorm};

/// eps of every norm in the block.
pub const BLOCK_NORM_EPS: f64 = 1e-6;

/// What every block of one forward call shares.
#[derive(Debug, Clone)]
pub struct BlockInputs<'a> {
    /// `SiLU(temb)` for the image stream: `[Bt, dim]`, or `[2·Bt, dim]` (rows of t, then rows of t = 0)
    /// when `zero_cond_t` is on.
    pub temb_img: &'a Tensor,
    /// `SiLU(temb)` of t only, for the text stream: `[Bt, dim]`.
    pub temb_txt: &'a Tensor,
    pub rope: &'a RopeFreqs,
    /// Joint key mask `[B, S_txt + S_img]` (non-zero = attend), text first.
    pub key_mask: Option<&'a Tensor>,
    /// `Some(n)` with `zero_cond_t`: the first `n` image tokens (the noise) take the t modulation and the
    /// rest (the references) the t = 0 modulation.
    pub noise_tokens: Option<usize>,
    /// Bound on one attention score block; `None` uses the shared default.
    pub attn_chunk_elements: Option<usize>,
}

/// One `(shift, scale, gate)` triple, each `[Bt, 1, dim]`; `scale1p` holds `1 + scale`.
#[derive(Debug, Clone)]
struct ModParams {
    shift: Tensor,
    scale1p: Tensor,
    gate: Tensor,
}

impl ModParams {
    /// Splits `[Bt, 3·dim]` into shift, scale, gate.
    fn new(p: &Tensor) -> Result<Self> {
        let chunks = p.unsqueeze(1)?.chunk(3, D::Minus1)?; // 3 × [Bt, 1, dim]
        Ok(Self {
            shift: chunks[0].clone(),
            scale1p: (&chunks[1] + 1.0)?,
            gate: chunks[2].clone(),
        })
    }

    fn modulate(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.scale1p)?.broadcast_add(&self.shift)
    }

    fn gate(&self, y: &Tensor) -> Result<Tensor> {
        y.broadcast_mul(&self.gate)
    }
}

/// The modulation of one stream for one sub-layer: uniform over tokens, or split between the noise
/// tokens (t) and the reference tokens (t = 0) for `zero_cond_t`.
#[derive(Debug, Clone)]
enum Modulation {
    Uniform(ModParams),
    Split {
        noise_tokens: usize,
        t: ModParams,
        zero: ModParams,
    },
}

impl Modulation {
    /// Applies `f(params, tokens)` per token group and reassembles the sequence `[B, S, dim]`.
    fn per_group(&self, x: &Tensor, f: impl Fn(&ModParams, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        match self {
            Modulation::Uniform(p) => f(p, x),
            Modulation::Split { noise_tokens, t, zero } => {
                let s = x.dim(1)?;
                let n = (*noise_tokens).min(s);
                if n == s {
                    return f(t, x);
                }
                let noise = f(t, &x.narrow(1, 0, n)?)?;
                let refs = f(zero, &x.narrow(1, n, s - n)?)?;
                Tensor::cat(&[noise, refs], 1)
            }
        }
    }

    /// `x · (1 + scale) + shift`.
    fn modulate(&self, x: &Tensor) -> Result<Tensor> {
        self.per_group(x, |p, x| p.modulate(x))
    }

    /// `gate · y`.
    fn gate(&self, y: &Tensor) -> Result<Tensor> {
        self.per_group(y, |p, y| p.gate(y))
    }
}

/// Splits the `[rows, 6·dim]` output of `img_mod`/`txt_mod` into the attention and MLP modulations
/// (layout `[shift1 | scale1 | gate1 | shift2 | scale2 | gate2]`).
fn modulations(params: &Tensor, noise_tokens: Option<usize>) -> Result<(Modulation, Modulation)> {
    let halves = params.chunk(2, D::Minus1)?; // 2 × [rows, 3·dim]
    match noise_tokens {
        None => Ok((
            Modulation::Uniform(ModParams::new(&halves[0])?),
            Modulation::Uniform(ModParams::new(&halves[1])?),
        )),
        Some(n) => {
            let rows = params.dim(0)?;
            if rows % 2 != 0 {
                candle_core::bail!("zero_cond_t modulation expects an even number of temb rows, got {rows}");
            }
            let bt = rows / 2;
            let split = |h: &Tensor| -> Result<Modulation> {
                Ok(Modulation::Split {
                    noise_tokens: n,
                    t: ModParams::new(&h.narrow(0, 0, bt)?)?,
                    zero: ModParams::new(&h.narrow(0, bt, bt)?)?,
                })
            };
            Ok((split(&halves[0])?, split(&halves[1])?))
        }
    }
}

/// `FeedForward(dim, dim_out=dim, mult=4, activation_fn="gelu-approximate")`: `net.2(gelu_tanh(net.0.proj(x)))`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = 4 * dim;
        Ok(Self {
            proj_in: linear(dim, hidden, vb.pp("net").pp("0").pp("proj"))?,
            proj_out: linear(hidden, dim, vb.pp("net").pp("2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj_in.forward(x)?; // [B, S, 4·dim]
                                          // tanh-GELU evaluated in f32 (PyTorch's opmath for half types), rounded once.
        let h = h.to_dtype(DType::F32)?.gelu()?.to_dtype(x.dtype())?;
        self.proj_out.forward(&h)
    }
}

/// `attn` of the block: separate projections per stream, QK RMSNorm, RoPE, one joint softmax over
/// `[text, image]` keys.
#[derive(Debug, Clone)]
pub struct JointAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    add_q_proj: Linear,
    add_k_proj: Linear,
    add_v_proj: Linear,
    to_out: Linear,
    to_add_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    norm_added_q: RmsNorm,
    norm_added_k: RmsNorm,
    heads: usize,
    head_dim: usize,
}

impl JointAttention {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let d = cfg.attention_head_dim;
        Ok(Self {
            to_q: linear(dim, dim, vb.pp("to_q"))?,
            to_k: linear(dim, dim, vb.pp("to_k"))?,
            to_v: linear(dim, dim, vb.pp("to_v"))?,
            add_q_proj: linear(dim, dim, vb.pp("add_q_proj"))?,
            add_k_proj: linear(dim, dim, vb.pp("add_k_proj"))?,
            add_v_proj: linear(dim, dim, vb.pp("add_v_proj"))?,
            to_out: linear(dim, dim, vb.pp("to_out").pp("0"))?,
            to_add_out: linear(dim, dim, vb.pp("to_add_out"))?,
            norm_q: RmsNorm::new(d, BLOCK_NORM_EPS, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(d, BLOCK_NORM_EPS, vb.pp("norm_k"))?,
            norm_added_q: RmsNorm::new(d, BLOCK_NORM_EPS, vb.pp("norm_added_q"))?,
            norm_added_k: RmsNorm::new(d, BLOCK_NORM_EPS, vb.pp("norm_added_k"))?,
            heads: cfg.num_attention_heads,
            head_dim: d,
        })
    }

    /// `proj(x)` split into heads, optionally RMS-normalised and rotated: `[B, S, dim]` → `[B, H, S, D]`.
    fn heads_of(
        &self,
        proj: &Linear,
        x: &Tensor,
        norm: Option<&RmsNorm>,
        rope: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let mut y = proj.forward(x)?.reshape((b, s, self.heads, self.head_dim))?; // [B, S, H, D]
        if let Some(norm) = norm {
            y = norm.forward(&y)?;
        }
        let y = y.transpose(1, 2)?; // [B, H, S, D]
        match rope {
            Some((cos, sin)) => apply_rope(&y, cos, sin),
            None => y.contiguous(),
        }
    }

    /// Returns `(img_out [B, S_img, dim], txt_out [B, S_txt, dim])`.
    pub fn forward(&self, img: &Tensor, txt: &Tensor, inp: &BlockInputs<'_>) -> Result<(Tensor, Tensor)> {
        let (b, s_img, dim) = img.dims3()?;
        let s_txt = txt.dim(1)?;
        let r = inp.rope;
        let img_rope = Some((&r.img_cos, &r.img_sin));
        let txt_rope = Some((&r.txt_cos, &r.txt_sin));
        let q_i = self.heads_of(&self.to_q, img, Some(&self.norm_q), img_rope)?;
        let k_i = self.heads_of(&self.to_k, img, Some(&self.norm_k), img_rope)?;
        let v_i = self.heads_of(&self.to_v, img, None, None)?;
        let q_t = self.heads_of(&self.add_q_proj, txt, Some(&self.norm_added_q), txt_rope)?;
        let k_t = self.heads_of(&self.add_k_proj, txt, Some(&self.norm_added_k), txt_rope)?;
        let v_t = self.heads_of(&self.add_v_proj, txt, None, None)?;
        // Joint sequence, text first: [B, H, S_txt + S_img, D].
        let q = Tensor::cat(&[q_t, q_i], 2)?;
        let k = Tensor::cat(&[k_t, k_i], 2)?;
        let v = Tensor::cat(&[v_t, v_i], 2)?;
        let mask = match inp.key_mask {
            Some(m) => AttnMask::KeyPadding(m),
            None => AttnMask::None,
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let o = match inp.attn_chunk_elements {
            None => attention(&q, &k, &v, mask, scale)?,
            Some(n) => attention_chunked(&q, &k, &v, mask, scale, n)?,
        };
        let o = o.transpose(1, 2)?.reshape((b, s_txt + s_img, dim))?; // [B, S, H·D]
        let o_txt = o.narrow(1, 0, s_txt)?.contiguous()?;
        let o_img = o.narrow(1, s_txt, s_img)?.contiguous()?;
        Ok((self.to_out.forward(&o_img)?, self.to_add_out.forward(&o_txt)?))
    }
}

/// Output of a block: both streams.
#[derive(Debug, Clone)]
pub struct Streams {
    pub img: Tensor,
    pub txt: Tensor,
}

/// `transformer_blocks.{i}`.
#[derive(Debug, Clone)]
pub struct QwenImageTransformerBlock {
    img_mod: Linear,
    txt_mod: Linear,
    attn: JointAttention,
    img_mlp: FeedForward,
    txt_mlp: FeedForward,
    norm: LayerNormNoAffine,
}

impl QwenImageTransformerBlock {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        Ok(Self {
            img_mod: linear(dim, 6 * dim, vb.pp("img_mod").pp("1"))?,
            txt_mod: linear(dim, 6 * dim, vb.pp("txt_mod").pp("1"))?,
            attn: JointAttention::new(cfg, vb.pp("attn"))?,
            img_mlp: FeedForward::new(dim, vb.pp("img_mlp"))?,
            txt_mlp: FeedForward::new(dim, vb.pp("txt_mlp"))?,
            norm: LayerNormNoAffine::new(dim, BLOCK_NORM_EPS, vb.dtype(), vb.device())?,
        })
    }

    /// `img: [B, S_img, dim]`, `txt: [B, S_txt, dim]` → both streams updated.
    pub fn forward(&self, img: &Tensor, txt: &Tensor, inp: &BlockInputs<'_>) -> Result<Streams> {
        // 1. Modulation parameters of both streams.
        let (img_mod1, img_mod2) = modulations(&self.img_mod.forward(inp.temb_img)?, inp.noise_tokens)?;
        let (txt_mod1, txt_mod2) = modulations(&self.txt_mod.forward(inp.temb_txt)?, None)?;

        // 2. norm1 + modulation, joint attention, gated residual.
        let img_x = img_mod1.modulate(&self.norm.forward(img)?)?;
        let txt_x = txt_mod1.modulate(&self.norm.forward(txt)?)?;
        let (img_attn, txt_attn) = self.attn.forward(&img_x, &txt_x, inp)?;
        let img = (img + img_mod1.gate(&img_attn)?)?;
        let txt = (txt + txt_mod1.gate(&txt_attn)?)?;

        // 3. norm2 + modulation, MLP, gated residual.
        let img_x = img_mod2.modulate(&self.norm.forward(&img)?)?;
        let img = (&img + img_mod2.gate(&self.img_mlp.forward(&img_x)?)?)?;
        let txt_x = txt_mod2.modulate(&self.norm.forward(&txt)?)?;
        let txt = (&txt + txt_mod2.gate(&self.txt_mlp.forward(&txt_x)?)?)?;

        // 4. The reference clips to the f16 range only in f16.
        if img.dtype() == DType::F16 {
            return Ok(Streams {
                img: img.clamp(-65504f32, 65504f32)?,
                txt: txt.clamp(-65504f32, 65504f32)?,
            });
        }
        Ok(Streams { img, txt })
    }
}
