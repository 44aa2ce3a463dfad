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

use super::config::TransformerConfig;
use super::embed::RopeFreqs;
use crate::models::nn::attention::{attention, attention_chunked, AttnMask};
use crate::models::nn::fused::{self, HeadsPart, PerToken, ShiftScale};
use crate::models::nn::linear::{linear, Linear};

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

/// One `(shift, scale, gate)` triple, each `[Bt, dim]` (views of the modulation Linear's output).
#[derive(Debug, Clone)]
struct ModParams {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl ModParams {
    /// Splits `[Bt, 3·dim]` into shift, scale, gate.
    fn new(p: &Tensor) -> Result<Self> {
        let chunks = p.chunk(3, D::Minus1)?; // 3 × [Bt, dim]
        Ok(Self {
            shift: chunks[0].clone(),
            scale: chunks[1].clone(),
            gate: chunks[2].clone(),
        })
    }

    fn shift_scale(&self) -> ShiftScale<'_> {
        ShiftScale {
            shift: &self.shift,
            scale: &self.scale,
        }
    }
}

/// The modulation of one stream for one sub-layer: uniform over tokens, or split between the noise
/// tokens (t) and the reference tokens (t = 0) for `zero_cond_t` (diffusers' `modulate_index`).
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
    fn per_token<'a, T>(&'a self, f: impl Fn(&'a ModParams) -> T) -> PerToken<T> {
        match self {
            Modulation::Uniform(p) => PerToken::All(f(p)),
            Modulation::Split { noise_tokens, t, zero } => PerToken::Split {
                n: *noise_tokens,
                head: f(t),
                tail: f(zero),
            },
        }
    }

    /// `norm(x) · (1 + scale) + shift`, the norm being the block's affine-free LayerNorm
    /// (diffusers: `img_normed = img_norm1(x)`, then `_modulate(img_normed, mod)`).
    fn norm_modulate(&self, x: &Tensor) -> Result<Tensor> {
        fused::layernorm_modulate(x, BLOCK_NORM_EPS, self.per_token(ModParams::shift_scale))
    }

    /// `x + gate · (y + bias)`: the gated residual, `bias` being the sub-layer's output bias when its
    /// Linear ran without it.
    fn gated_residual(&self, x: &Tensor, y: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        fused::gate_residual(x, y, bias, self.per_token(|p| &p.gate))
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
        let y = self.forward_no_out_bias(x)?;
        match self.out_bias() {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// [`Self::forward`] without `net.2`'s bias (see [`Self::out_bias`]), for a fused gated residual.
    pub fn forward_no_out_bias(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj_in.forward_no_bias(x)?; // [B, S, 4·dim]
                                                  // tanh-GELU of (h + bias) evaluated in f32 (PyTorch's opmath for half types), rounded once.
        let h = fused::bias_gelu_tanh(&h, self.proj_in.bias())?;
        self.proj_out.forward_no_bias(&h)
    }

    /// The bias of `net.2`.
    pub fn out_bias(&self) -> Option<&Tensor> {
        self.proj_out.bias()
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
    /// RMSNorm weights `[head_dim]` of `norm_q`, `norm_k`, `norm_added_q`, `norm_added_k`.
    norm_q: Tensor,
    norm_k: Tensor,
    norm_added_q: Tensor,
    norm_added_k: Tensor,
    heads: usize,
    head_dim: usize,
}

impl JointAttention {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let d = cfg.attention_head_dim;
        let norm = |name: &str| vb.pp(name).get(d, "weight");
        Ok(Self {
            to_q: linear(dim, dim, vb.pp("to_q"))?,
            to_k: linear(dim, dim, vb.pp("to_k"))?,
            to_v: linear(dim, dim, vb.pp("to_v"))?,
            add_q_proj: linear(dim, dim, vb.pp("add_q_proj"))?,
            add_k_proj: linear(dim, dim, vb.pp("add_k_proj"))?,
            add_v_proj: linear(dim, dim, vb.pp("add_v_proj"))?,
            to_out: linear(dim, dim, vb.pp("to_out").pp("0"))?,
            to_add_out: linear(dim, dim, vb.pp("to_add_out"))?,
            norm_q: norm("norm_q")?,
            norm_k: norm("norm_k")?,
            norm_added_q: norm("norm_added_q")?,
            norm_added_k: norm("norm_added_k")?,
            heads: cfg.num_attention_heads,
            head_dim: d,
        })
    }

    /// The joint `[B, H, S_txt + S_img, D]` input of one projection pair (text first): each stream's
    /// projection, its bias, the optional per-head RMSNorm and RoPE, written in place by one fused op
    /// (diffusers: `attn.to_q(x).unflatten(-1, (heads, -1))`, `norm_q`, `apply_rotary_emb_qwen`, then
    /// `torch.cat([txt_query, img_query], dim=1)`).
    fn joint(
        &self,
        (txt_proj, img_proj): (&Linear, &Linear),
        (txt, img): (&Tensor, &Tensor),
        norms: Option<(&Tensor, &Tensor)>,
        rope: Option<&RopeFreqs>,
    ) -> Result<Tensor> {
        let (tx, ix) = (txt_proj.forward_no_bias(txt)?, img_proj.forward_no_bias(img)?);
        let parts = [
            HeadsPart {
                x: &tx,
                bias: txt_proj.bias(),
                norm: norms.map(|n| n.0),
                rope: rope.map(|r| (&r.txt_cos, &r.txt_sin)),
            },
            HeadsPart {
                x: &ix,
                bias: img_proj.bias(),
                norm: norms.map(|n| n.1),
                rope: rope.map(|r| (&r.img_cos, &r.img_sin)),
            },
        ];
        fused::joint_heads(&parts, self.heads, self.head_dim, BLOCK_NORM_EPS)
    }

    /// Returns `(img_out [B, S_img, dim], txt_out [B, S_txt, dim])`.
    pub fn forward(&self, img: &Tensor, txt: &Tensor, inp: &BlockInputs<'_>) -> Result<(Tensor, Tensor)> {
        let (img_o, txt_o) = self.forward_no_out_bias(img, txt, inp)?;
        let add = |y: Tensor, l: &Linear| match l.bias() {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        };
        Ok((add(img_o, &self.to_out)?, add(txt_o, &self.to_add_out)?))
    }

    /// [`Self::forward`] without the biases of `to_out.0` and `to_add_out` (see [`Self::out_biases`]),
    /// for a fused gated residual.
    pub fn forward_no_out_bias(&self, img: &Tensor, txt: &Tensor, inp: &BlockInputs<'_>) -> Result<(Tensor, Tensor)> {
        let s_txt = txt.dim(1)?;
        let streams = (txt, img);
        // Joint sequence, text first: [B, H, S_txt + S_img, D].
        let q = self.joint(
            (&self.add_q_proj, &self.to_q),
            streams,
            Some((&self.norm_added_q, &self.norm_q)),
            Some(inp.rope),
        )?;
        let k = self.joint(
            (&self.add_k_proj, &self.to_k),
            streams,
            Some((&self.norm_added_k, &self.norm_k)),
            Some(inp.rope),
        )?;
        let v = self.joint((&self.add_v_proj, &self.to_v), streams, None, None)?;
        let mask = match inp.key_mask {
            Some(m) => AttnMask::KeyPadding(m),
            None => AttnMask::None,
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let o = match inp.attn_chunk_elements {
            None => attention(&q, &k, &v, mask, scale)?,
            Some(n) => attention_chunked(&q, &k, &v, mask, scale, n)?,
        };
        // [B, H, S, D] → text rows [B, S_txt, H·D] and image rows [B, S_img, H·D].
        let (o_txt, o_img) = fused::heads_to_rows(&o, s_txt)?;
        Ok((
            self.to_out.forward_no_bias(&o_img)?,
            self.to_add_out.forward_no_bias(&o_txt)?,
        ))
    }

    /// The biases of `to_out.0` (image) and `to_add_out` (text).
    pub fn out_biases(&self) -> (Option<&Tensor>, Option<&Tensor>) {
        (self.to_out.bias(), self.to_add_out.bias())
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
        })
    }

    /// `img: [B, S_img, dim]`, `txt: [B, S_txt, dim]` → both streams updated.
    ///
    /// Each step is one fused op on CUDA in bf16 (see [`crate::models::nn::fused`]); the Linears before
    /// a fused op run without their bias and the op adds it.
    pub fn forward(&self, img: &Tensor, txt: &Tensor, inp: &BlockInputs<'_>) -> Result<Streams> {
        // 1. Modulation parameters of both streams: img_mod(temb), txt_mod(temb), chunked in two.
        let (img_mod1, img_mod2) = modulations(&self.img_mod.forward(inp.temb_img)?, inp.noise_tokens)?;
        let (txt_mod1, txt_mod2) = modulations(&self.txt_mod.forward(inp.temb_txt)?, None)?;

        // 2. img_modulated = norm1(img)·(1 + scale1) + shift1 (same for txt), joint attention,
        //    img = img + gate1·attn_output (to_out's bias added inside the gated residual).
        let img_x = img_mod1.norm_modulate(img)?;
        let txt_x = txt_mod1.norm_modulate(txt)?;
        let (img_attn, txt_attn) = self.attn.forward_no_out_bias(&img_x, &txt_x, inp)?;
        let (img_out_bias, txt_out_bias) = self.attn.out_biases();
        let img = img_mod1.gated_residual(img, &img_attn, img_out_bias)?;
        let txt = txt_mod1.gated_residual(txt, &txt_attn, txt_out_bias)?;

        // 3. norm2 + modulation, MLP, gated residual (net.2's bias inside the gated residual).
        let img_x = img_mod2.norm_modulate(&img)?;
        let img_y = self.img_mlp.forward_no_out_bias(&img_x)?;
        let img = img_mod2.gated_residual(&img, &img_y, self.img_mlp.out_bias())?;
        let txt_x = txt_mod2.norm_modulate(&txt)?;
        let txt_y = self.txt_mlp.forward_no_out_bias(&txt_x)?;
        let txt = txt_mod2.gated_residual(&txt, &txt_y, self.txt_mlp.out_bias())?;

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
