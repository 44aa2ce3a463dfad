//! The Qwen2.5-VL vision tower (`Qwen2_5_VisionTransformerPretrainedModel`).
//!
//! Keys (under `visual.` in the legacy layout, `model.visual.` in the transformers-5 layout):
//! `patch_embed.proj.weight [hidden, C, T, P, P]` (a Conv3d with stride = kernel, applied here as one
//! matmul on the flattened `C·T·P·P` rows), `blocks.{i}.{norm1, norm2}.weight`,
//! `blocks.{i}.attn.{qkv, proj}.{weight, bias}`, `blocks.{i}.mlp.{gate_proj, up_proj, down_proj}.{weight,
//! bias}`, `merger.ln_q.weight`, `merger.mlp.{0, 2}.{weight, bias}`.
//!
//! Forward: patch embed → 2-D rotary embedding per patch → permute merge-groups into window-major order →
//! blocks (windowed attention, full attention per image at `fullatt_block_indexes`) → merger
//! (RMSNorm, group `merge²` tokens, Linear → GELU(erf) → Linear) → undo the window permutation.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::models::nn::linear::{linear, Linear};

use super::config::VisionConfig;
use super::text::{activation, RmsNorm};
use crate::models::nn::attention::{attention, AttnMask};

/// RoPE base of the vision tower (`Qwen2_5_VisionRotaryEmbedding` default).
const VISION_ROPE_THETA: f32 = 10000.0;
/// RMSNorm epsilon of the vision blocks and the merger (hard-coded in the reference).
const VISION_NORM_EPS: f64 = 1e-6;

/// Token order and attention segments of one vision forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowLayout {
    /// For each position of the permuted sequence of merge groups, the original group index
    /// (`window_index` of the reference).
    pub window_index: Vec<u32>,
    /// Window segment lengths in patches (permuted order), empty windows removed.
    pub window_lens: Vec<usize>,
    /// Full-attention segment lengths in patches (one per image frame).
    pub full_lens: Vec<usize>,
}

/// `get_window_index` of the reference for a list of `(t, h, w)` patch grids.
pub fn window_layout(grids: &[[usize; 3]], merge: usize, merged_window: usize) -> Result<WindowLayout> {
    let unit = merge * merge;
    let mut window_index = Vec::new();
    let mut window_lens = Vec::new();
    let mut full_lens = Vec::new();
    let mut offset = 0usize;
    for &[gt, gh, gw] in grids {
        if gh % merge != 0 || gw % merge != 0 {
            candle_core::bail!("vision grid {gh}x{gw} is not a multiple of the merge size {merge}");
        }
        let (lh, lw) = (gh / merge, gw / merge);
        let (nwh, nww) = (lh.div_ceil(merged_window), lw.div_ceil(merged_window));
        for t in 0..gt {
            for wh in 0..nwh {
                for ww in 0..nww {
                    let mut count = 0;
                    for r in wh * merged_window..((wh + 1) * merged_window).min(lh) {
                        for c in ww * merged_window..((ww + 1) * merged_window).min(lw) {
                            window_index.push((offset + t * lh * lw + r * lw + c) as u32);
                            count += 1;
                        }
                    }
                    if count > 0 {
                        window_lens.push(count * unit);
                    }
                }
            }
            full_lens.push(gh * gw);
        }
        offset += gt * lh * lw;
    }
    Ok(WindowLayout {
        window_index,
        window_lens,
        full_lens,
    })
}

/// Per-patch vision rotary angles `[h·f, w·f]` (`head_dim / 2` values) in the processor's
/// merge-block-major patch order, for every grid.
fn rotary_angles(grids: &[[usize; 3]], merge: usize, head_dim: usize) -> Vec<f32> {
    let dim = head_dim / 2; // rotary dim of the reference
    let inv_freq: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / VISION_ROPE_THETA.powf(i as f32 / dim as f32))
        .collect();
    let mut out = Vec::new();
    for &[gt, gh, gw] in grids {
        for _ in 0..gt {
            for bh in 0..gh / merge {
                for bw in 0..gw / merge {
                    for mh in 0..merge {
                        for mw in 0..merge {
                            let (h, w) = ((bh * merge + mh) as f32, (bw * merge + mw) as f32);
                            out.extend(inv_freq.iter().map(|f| h * f));
                            out.extend(inv_freq.iter().map(|f| w * f));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Attention restricted to consecutive segments of the sequence. `q, k, v: [1, H, S, D]`.
/// Runs of equal-length segments are batched into one call.
fn segmented_attention(q: &Tensor, k: &Tensor, v: &Tensor, lens: &[usize], scale: f64) -> Result<Tensor> {
    let (_, h, s, d) = q.dims4()?;
    if lens.iter().sum::<usize>() != s {
        candle_core::bail!("vision attention segments {lens:?} do not cover {s} tokens");
    }
    let mut outs = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < lens.len() {
        let len = lens[i];
        let mut n = 1;
        while i + n < lens.len() && lens[i + n] == len {
            n += 1;
        }
        let batch = |x: &Tensor| -> Result<Tensor> {
            // [1, H, n·len, D] → [H, n, len, D] → [n, H, len, D]
            x.narrow(2, start, n * len)?
                .reshape((h, n, len, d))?
                .transpose(0, 1)?
                .contiguous()
        };
        let o = attention(&batch(q)?, &batch(k)?, &batch(v)?, AttnMask::None, scale)?;
        // [n, H, len, D] → [H, n·len, D]
        outs.push(o.transpose(0, 1)?.reshape((h, n * len, d))?);
        start += n * len;
        i += n;
    }
    Tensor::cat(&outs, 1)?.unsqueeze(0)
}

struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.hidden_size;
        Ok(Self {
            qkv: linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj: linear(dim, dim, vb.pp("proj"))?,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x: [S, hidden]`, `cos, sin: [S, head_dim/2]` (f32).
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, lens: &[usize]) -> Result<Tensor> {
        let (s, _) = x.dims2()?;
        let dtype = x.dtype();
        // [S, 3·hidden] → [S, 3, H, D] → [3, H, S, D]
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((s, 3, self.num_heads, self.head_dim))?
            .permute((1, 2, 0, 3))?;
        let rot = |i: usize| -> Result<Tensor> {
            let t = qkv.get(i)?.unsqueeze(0)?.to_dtype(DType::F32)?.contiguous()?; // [1, H, S, D]
            candle_nn::rotary_emb::rope(&t, cos, sin)?.to_dtype(dtype)
        };
        let q = rot(0)?;
        let k = rot(1)?;
        let v = qkv.get(2)?.unsqueeze(0)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let o = segmented_attention(&q, &k, &v, lens, scale)?; // [1, H, S, D]
        let o = o
            .squeeze(0)?
            .transpose(0, 1)?
            .reshape((s, self.num_heads * self.head_dim))?;
        self.proj.forward(&o)
    }
}

struct VisionMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: String,
}

impl VisionMlp {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear(d, i, vb.pp("gate_proj"))?,
            up_proj: linear(d, i, vb.pp("up_proj"))?,
            down_proj: linear(i, d, vb.pp("down_proj"))?,
            act: cfg.hidden_act.clone(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = activation(&self.act, &self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(g * self.up_proj.forward(x)?)?)
    }
}

struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: RmsNorm::new(cfg.hidden_size, VISION_NORM_EPS, vb.pp("norm1"))?,
            norm2: RmsNorm::new(cfg.hidden_size, VISION_NORM_EPS, vb.pp("norm2"))?,
            attn: VisionAttention::new(cfg, vb.pp("attn"))?,
            mlp: VisionMlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, lens: &[usize]) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?, cos, sin, lens)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

struct PatchMerger {
    ln_q: RmsNorm,
    mlp0: Linear,
    mlp2: Linear,
    group_dim: usize,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let group_dim = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(Self {
            ln_q: RmsNorm::new(cfg.hidden_size, VISION_NORM_EPS, vb.pp("ln_q"))?,
            mlp0: linear(group_dim, group_dim, vb.pp("mlp").pp("0"))?,
            mlp2: linear(group_dim, cfg.out_hidden_size, vb.pp("mlp").pp("2"))?,
            group_dim,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (s, d) = x.dims2()?;
        // [S, hidden] → [S / merge², merge² · hidden]
        let x = self
            .ln_q
            .forward(x)?
            .reshape((s * d / self.group_dim, self.group_dim))?;
        let x = self.mlp0.forward(&x)?.gelu_erf()?;
        self.mlp2.forward(&x)
    }
}

/// The vision tower.
pub struct VisionModel {
    patch_embed: Tensor, // [hidden, C·T·P·P]
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    cfg: VisionConfig,
}

impl VisionModel {
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let w = vb.pp("patch_embed").pp("proj").get(
            (
                cfg.hidden_size,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ),
            "weight",
        )?;
        let patch_embed = w.reshape((cfg.hidden_size, cfg.patch_dim()))?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let merger = PatchMerger::new(cfg, vb.pp("merger"))?;
        Ok(Self {
            patch_embed,
            blocks,
            merger,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// `pixel_values: [N, C·T·P·P]` (all images concatenated, processor order), `grids` their
    /// `(t, h, w)`. Returns the merged embeddings `[N / merge², out_hidden]` in processor order.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let dev = pixel_values.device();
        let dtype = self.patch_embed.dtype();
        let (n, row) = pixel_values.dims2()?;
        let expected: usize = grids.iter().map(|g| g.iter().product::<usize>()).sum();
        if n != expected || row != cfg.patch_dim() {
            candle_core::bail!(
                "pixel_values {:?} do not match grids {grids:?} (expected [{expected}, {}])",
                pixel_values.shape(),
                cfg.patch_dim()
            );
        }
        let m = cfg.spatial_merge_size;
        let unit = m * m;
        let head_dim = cfg.head_dim();

        // 1. Patch embedding: Conv3d with stride = kernel = one matmul. [N, row] · [row, hidden]
        let x = pixel_values.to_dtype(dtype)?.matmul(&self.patch_embed.t()?)?;

        // 2. Window layout and rotary tables, both in window-major order.
        let layout = window_layout(grids, m, cfg.merged_window())?;
        let angles = rotary_angles(grids, m, head_dim); // [N, head_dim/2]
        let half = head_dim / 2;
        let mut perm_angles = Vec::with_capacity(angles.len());
        for &g in &layout.window_index {
            let start = g as usize * unit * half;
            perm_angles.extend_from_slice(&angles[start..start + unit * half]);
        }
        let cos: Vec<f32> = perm_angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = perm_angles.iter().map(|a| a.sin()).collect();
        let cos = Tensor::from_vec(cos, (n, half), dev)?;
        let sin = Tensor::from_vec(sin, (n, half), dev)?;

        let index = Tensor::new(layout.window_index.as_slice(), dev)?;
        // [N, hidden] → [N / unit, unit, hidden] → permuted groups → [N, hidden]
        let hidden = x.dim(1)?;
        let mut x = x
            .reshape((n / unit, unit, hidden))?
            .index_select(&index, 0)?
            .reshape((n, hidden))?;

        // 3. Blocks.
        for (i, blk) in self.blocks.iter().enumerate() {
            let lens = if cfg.fullatt_block_indexes.contains(&i) {
                &layout.full_lens
            } else {
                &layout.window_lens
            };
            x = blk.forward(&x, &cos, &sin, lens)?;
        }

        // 4. Merger, then back to processor order.
        let merged = self.merger.forward(&x)?; // [N / unit, out_hidden]
        let mut inverse = vec![0u32; layout.window_index.len()];
        for (pos, &g) in layout.window_index.iter().enumerate() {
            inverse[g as usize] = pos as u32;
        }
        let inverse = Tensor::new(inverse.as_slice(), dev)?;
        merged.index_select(&inverse, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_layout_matches_reference_shape() {
        // Merged grid 5×7 with 4×4 windows: windows of 4×4, 4×3, 1×4, 1×3 merged tokens.
        let l = window_layout(&[[1, 10, 14]], 2, 4).unwrap();
        assert_eq!(l.window_lens, vec![64, 48, 16, 12]);
        assert_eq!(l.full_lens, vec![140]);
        assert_eq!(&l.window_index[..5], &[0, 1, 2, 3, 7]);
        assert_eq!(&l.window_index[16..19], &[4, 5, 6]);
        // A grid that divides evenly: the reference's extra padded window is empty and dropped.
        let l = window_layout(&[[1, 4, 6], [1, 8, 8]], 2, 4).unwrap();
        assert_eq!(l.window_lens, vec![24, 64]);
        assert_eq!(l.full_lens, vec![24, 64]);
        assert_eq!(l.window_index.len(), 6 + 16);
        assert_eq!(l.window_index[6], 6);
    }
}
