//! The Qwen2.5-VL language model (`Qwen2_5_VLTextModel`) and its 3-D multimodal RoPE positions.
//!
//! Keys (under `model.` in the legacy layout, `model.language_model.` in the transformers-5 layout):
//! `embed_tokens.weight [vocab, hidden]`, `layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}`,
//! `layers.{i}.self_attn.o_proj.weight`, `layers.{i}.mlp.{gate,up,down}_proj.weight`,
//! `layers.{i}.{input_layernorm,post_attention_layernorm}.weight`, `norm.weight`. `lm_head` is not used.
//!
//! Decoder layer: `x + o_proj(attn(RMSNorm(x)))`, then `x + down(act(gate(y)) · up(y))`, `y = RMSNorm(x)`;
//! causal attention with GQA; RoPE in the rotate-half style where the frequency `j` of the `head_dim/2`
//! takes its angle from the t, h or w position according to `mrope_section`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::models::nn::linear::{linear, linear_no_bias, Linear};

use super::config::TextConfig;
use crate::models::nn::attention::{attention, AttnMask};

/// Activation functions by their transformers `ACT2FN` name.
pub fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    match name {
        "silu" | "swish" => x.silu(),
        "gelu" => x.gelu_erf(),
        "gelu_pytorch_tanh" | "gelu_new" => x.gelu(),
        "quick_gelu" => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        "relu" => x.relu(),
        other => candle_core::bail!("activation `{other}` is not supported"),
    }
}

/// RMSNorm with the statistics in f32 and the weight applied in the input dtype (as the reference).
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight)
    }
}

/// Which multimodal tokens `rope_index` needs to recognise.
#[derive(Debug, Clone, Copy)]
pub struct MultimodalIds {
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
}

/// `get_rope_index` of transformers 5.2 for one unpadded sequence of still images: text tokens get
/// `(p, p, p)`; the image token at merged-grid `(r, c)` gets `(s, s + r, s + c)` where `s` is the
/// position after the preceding text; text resumes at `s + max(grid_h, grid_w) / merge`.
/// Returns one `[t, h, w]` per token.
pub fn rope_index(ids: &[u32], grids: &[[usize; 3]], mm: MultimodalIds, merge: usize) -> Result<Vec<[u32; 3]>> {
    let mut num_images = 0;
    for (i, &id) in ids.iter().enumerate() {
        if id == mm.vision_start_token_id {
            match ids.get(i + 1) {
                Some(&n) if n == mm.image_token_id => num_images += 1,
                Some(&n) if n == mm.video_token_id => candle_core::bail!("video inputs are not supported"),
                _ => {}
            }
        }
    }
    if num_images != grids.len() {
        candle_core::bail!(
            "input ids hold {num_images} images but {} grids were given",
            grids.len()
        );
    }
    let mut pos = Vec::with_capacity(ids.len());
    let mut next = 0u32; // max position so far + 1
    let mut st = 0usize;
    for &[gt, gh, gw] in grids {
        let ed = match ids[st..].iter().position(|&i| i == mm.image_token_id) {
            Some(p) => st + p,
            None => candle_core::bail!("fewer image tokens than images in the input ids"),
        };
        for _ in st..ed {
            pos.push([next; 3]);
            next += 1;
        }
        let (lh, lw) = (gh / merge, gw / merge);
        let s = next;
        for _t in 0..gt {
            // Still images: the temporal index is 0 for every frame (second_per_grid_t = 0).
            for r in 0..lh {
                for c in 0..lw {
                    pos.push([s, s + r as u32, s + c as u32]);
                }
            }
        }
        next = s + lh.max(lw).max(1) as u32;
        st = ed + gt * lh * lw;
        if st > ids.len() {
            candle_core::bail!("image {gt}x{gh}x{gw} has more tokens than the input ids");
        }
    }
    for _ in st..ids.len() {
        pos.push([next; 3]);
        next += 1;
    }
    Ok(pos)
}

/// Half-width cos/sin tables `[L, head_dim/2]` (f32) for M-RoPE: frequency `j` uses the t, h or w
/// position according to `section`; `inv_freq_j = theta^(-2j/head_dim)`.
pub fn mrope_cos_sin(
    positions: &[[u32; 3]],
    section: &[usize],
    head_dim: usize,
    theta: f64,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / (theta as f32).powf(i as f32 / head_dim as f32))
        .collect();
    let mut axis_of = Vec::with_capacity(half);
    for (axis, &n) in section.iter().enumerate() {
        axis_of.extend(std::iter::repeat_n(axis, n));
    }
    if axis_of.len() != half {
        candle_core::bail!("mrope_section {section:?} does not cover head_dim / 2 = {half}");
    }
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for p in positions {
        for j in 0..half {
            let a = p[axis_of[j]] as f32 * inv_freq[j];
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let n = positions.len();
    Ok((
        Tensor::from_vec(cos, (n, half), dev)?,
        Tensor::from_vec(sin, (n, half), dev)?,
    ))
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, kv, d) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
        let hidden = cfg.hidden_size;
        Ok(Self {
            q_proj: linear(hidden, h * d, vb.pp("q_proj"))?,
            k_proj: linear(hidden, kv * d, vb.pp("k_proj"))?,
            v_proj: linear(hidden, kv * d, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(h * d, hidden, vb.pp("o_proj"))?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d,
        })
    }

    /// `x: [B, L, hidden]`; `cos, sin: [L, head_dim/2]` in the dtype of `x`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let d = self.head_dim;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            // [B, L, n·D] → [B, L, n, D] → [B, n, L, D]
            t.reshape((b, l, n, d))?.transpose(1, 2)?.contiguous()
        };
        let q = heads(self.q_proj.forward(x)?, self.num_heads)?;
        let k = heads(self.k_proj.forward(x)?, self.num_kv_heads)?;
        let v = heads(self.v_proj.forward(x)?, self.num_kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let rep = self.num_heads / self.num_kv_heads;
        let expand = |t: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(t);
            }
            // [B, KV, L, D] → [B, KV, rep, L, D] → [B, KV·rep, L, D]
            t.unsqueeze(2)?
                .expand((b, self.num_kv_heads, rep, l, d))?
                .reshape((b, self.num_heads, l, d))
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let o = attention(&q, &k, &v, AttnMask::Causal, 1.0 / (d as f64).sqrt())?;
        // [B, H, L, D] → [B, L, H·D]
        let o = o.transpose(1, 2)?.reshape((b, l, self.num_heads * d))?;
        self.o_proj.forward(&o)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: String,
}

impl Mlp {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear_no_bias(h, i, vb.pp("gate_proj"))?,
            up_proj: linear_no_bias(h, i, vb.pp("up_proj"))?,
            down_proj: linear_no_bias(i, h, vb.pp("down_proj"))?,
            act: cfg.hidden_act.clone(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = activation(&self.act, &self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(g * self.up_proj.forward(x)?)?)
    }
}

struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.input_layernorm.forward(x)?, cos, sin)?)?;
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?
    }
}

/// The language model up to and including the final `norm`.
pub struct TextModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    cfg: TextConfig,
}

impl TextModel {
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            cfg: cfg.clone(),
        })
    }

    /// Token embeddings `[1, L, hidden]` with the rows of `image_token_id` replaced, in order, by the
    /// rows of `image_embeds` (`masked_scatter` of the reference).
    pub fn embed(&self, ids: &[u32], image_embeds: Option<&Tensor>, image_token_id: u32) -> Result<Tensor> {
        let dev = self.embed_tokens.embeddings().device();
        let ids_t = Tensor::new(ids, dev)?;
        let text = self.embed_tokens.forward(&ids_t)?; // [L, hidden]
        let n_img = ids.iter().filter(|&&i| i == image_token_id).count();
        let out = match image_embeds {
            None if n_img == 0 => text,
            None => candle_core::bail!("input ids hold {n_img} image tokens but no image features were given"),
            Some(img) => {
                let (m, _) = img.dims2()?;
                if m != n_img {
                    candle_core::bail!("Image features and image tokens do not match, tokens: {n_img}, features: {m}");
                }
                let l = ids.len();
                let mut k = 0u32;
                let index: Vec<u32> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| {
                        if id == image_token_id {
                            k += 1;
                            (l as u32) + k - 1
                        } else {
                            i as u32
                        }
                    })
                    .collect();
                let table = Tensor::cat(&[&text, &img.to_dtype(text.dtype())?], 0)?; // [L + M, hidden]
                table.index_select(&Tensor::new(index.as_slice(), dev)?, 0)?
            }
        };
        out.unsqueeze(0)
    }

    /// Final hidden states `[1, L, hidden]` (after `norm`) for `inputs_embeds: [1, L, hidden]` and
    /// 3-D positions (one `[t, h, w]` per token).
    pub fn forward(&self, inputs_embeds: &Tensor, positions: &[[u32; 3]]) -> Result<Tensor> {
        let (_, l, _) = inputs_embeds.dims3()?;
        if positions.len() != l {
            candle_core::bail!("{} positions for {l} tokens", positions.len());
        }
        let section = self
            .cfg
            .mrope_section()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let dev = inputs_embeds.device();
        let (cos, sin) = mrope_cos_sin(positions, section, self.cfg.head_dim(), self.cfg.rope_theta(), dev)?;
        let dtype = inputs_embeds.dtype();
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        let mut x = inputs_embeds.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &cos, &sin)?;
        }
        self.norm.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_index_edit_layout() {
        let mm = MultimodalIds {
            image_token_id: 9,
            video_token_id: 8,
            vision_start_token_id: 5,
        };
        // text text <vs> [img × (2×3 merged)] <ve> text
        let mut ids = vec![1, 2, 5];
        ids.extend(std::iter::repeat_n(9, 6));
        ids.extend([6, 3]);
        let p = rope_index(&ids, &[[1, 4, 6]], mm, 2).unwrap();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[2], [2, 2, 2]);
        assert_eq!(p[3], [3, 3, 3]);
        assert_eq!(p[5], [3, 3, 5]);
        assert_eq!(p[6], [3, 4, 3]);
        assert_eq!(p[8], [3, 4, 5]);
        // text resumes at s + max(2, 3) = 6
        assert_eq!(p[9], [6, 6, 6]);
        assert_eq!(p[10], [7, 7, 7]);
    }
}
