//! Parity of the prompt encoder with transformers 5.2.0 / diffusers 0.42.1 (f32, CPU).
//!
//! Golden files (`tests/fixtures/golden/text_encoder_{edit,plus}.safetensors`) hold the processor
//! outputs (`input_ids`, `attention_mask`, `pixel_values`, `image_grid_thw`), the 3-D positions of
//! `get_rope_index`, the vision features (`dbg.vision_embeds`), the language model's input embeddings
//! (`dbg.inputs_embeds`), the final hidden states and the pipeline's `prompt_embeds`, plus the prompt
//! and template as metadata. The processor inputs are the PNGs next to them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use qwen_edit::models::text_encoder::{ProcessedImage, PromptEncoder, Template};

const REL_TOL: f32 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Golden {
    t: HashMap<String, Tensor>,
    prompt: String,
    template: String,
}

fn golden(name: &str) -> Golden {
    let path = root().join("golden").join(format!("text_encoder_{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("safetensors header");
    let meta = meta.metadata().clone().unwrap_or_default();
    let t = candle_core::safetensors::load(&path, &Device::Cpu).expect("golden tensors");
    Golden {
        t,
        prompt: meta.get("prompt").cloned().expect("prompt metadata"),
        template: meta.get("template").cloned().expect("template metadata"),
    }
}

impl Golden {
    fn get(&self, k: &str) -> &Tensor {
        self.t.get(k).unwrap_or_else(|| panic!("golden tensor {k} missing"))
    }
    fn ints(&self, k: &str) -> Vec<i64> {
        self.get(k).flatten_all().unwrap().to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()
    }
}

fn image(name: &str) -> image::RgbImage {
    let path = root().join("golden").join(name);
    image::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display())).to_rgb8()
}

fn encoder(model: &str) -> PromptEncoder {
    let dir = root().join("models").join(model);
    PromptEncoder::load(&dir.join("text_encoder"), &dir.join("processor"), DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {model}: {e:#}"))
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    max_abs(&(a - &b).unwrap()) / max_abs(&b).max(1e-12)
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    let e = rel_err(got, want);
    println!("{what}: relative error {e:.3e}");
    assert!(e <= REL_TOL, "{what}: relative error {e:.3e} > {REL_TOL:.0e}");
}

fn positions_flat(p: &[[u32; 3]]) -> Vec<i64> {
    (0..3).flat_map(|a| p.iter().map(move |x| x[a] as i64)).collect()
}

/// Splits the golden `pixel_values` into per-image blocks so the model can be checked independently
/// of the resize.
fn golden_images(g: &Golden) -> Vec<ProcessedImage> {
    let grids = g.ints("image_grid_thw");
    let pv = g.get("pixel_values").to_dtype(DType::F32).unwrap();
    let mut start = 0;
    grids
        .chunks(3)
        .map(|c| {
            let grid = [c[0] as usize, c[1] as usize, c[2] as usize];
            let n = grid.iter().product::<usize>();
            let t = pv.narrow(0, start, n).unwrap();
            start += n;
            ProcessedImage { pixel_values: t, grid_thw: grid }
        })
        .collect()
}

fn check(model: &str, name: &str, template: Template, images: &[&str]) {
    let g = golden(name);
    let enc = encoder(model);
    let n_img = images.len();
    assert_eq!(g.template, template.render("{}", if template == Template::Plus { 0 } else { n_img }), "template");

    // 1. Image processor.
    let imgs: Vec<image::RgbImage> = images.iter().map(|n| image(n)).collect();
    let ours: Vec<ProcessedImage> = imgs.iter().map(|i| enc.process_image(i).unwrap()).collect();
    let gold_imgs = golden_images(&g);
    assert_eq!(ours.len(), gold_imgs.len());
    for (k, (o, w)) in ours.iter().zip(&gold_imgs).enumerate() {
        assert_eq!(o.grid_thw, w.grid_thw, "grid_thw of image {k}");
        let d = max_abs(&(&o.pixel_values - &w.pixel_values).unwrap());
        let (gt, gh, gw) = (w.grid_thw[0], w.grid_thw[1], w.grid_thw[2]);
        let p = enc.config().vision.patch_size;
        let resized = (imgs[k].height() as usize, imgs[k].width() as usize) != (gh * p, gw * p);
        println!("{name} image {k}: grid {gt}x{gh}x{gw}, resized: {resized}, pixel_values max |diff| {d:.3e}");
        if !resized {
            assert_eq!(d, 0.0, "pixel_values of image {k} (no resize) must be exact");
        }
    }

    // 2. Token ids and positions.
    let ids = enc.build_input_ids(template, &g.prompt, &ours).unwrap();
    let want_ids = g.ints("input_ids");
    assert_eq!(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), want_ids, "input_ids");
    assert!(g.ints("attention_mask").iter().all(|&m| m == 1));
    assert_eq!(enc.drop_idx(), 64, "drop_idx");
    let pos = enc.rope_index(&ids, &ours).unwrap();
    assert_eq!(positions_flat(&pos), g.ints("position_ids"), "position_ids");

    // 3. Model on the reference pixel values.
    let vis = enc.vision_embeds(&gold_imgs).unwrap().unwrap();
    assert_close(&format!("{name} vision_embeds"), &vis, g.get("dbg.vision_embeds"));
    let emb = enc.inputs_embeds(&ids, &gold_imgs).unwrap();
    assert_close(&format!("{name} inputs_embeds"), &emb, g.get("dbg.inputs_embeds"));
    let hidden = enc.forward_hidden(&ids, &gold_imgs).unwrap();
    assert_close(&format!("{name} last_hidden_state"), &hidden, g.get("last_hidden_state"));
    let l = ids.len();
    let drop = enc.drop_idx();
    assert_close(&format!("{name} prompt_embeds"), &hidden.narrow(1, drop, l - drop).unwrap(), g.get("prompt_embeds"));

    // 4. End to end from the PNGs (our own resize).
    let pe = match template {
        Template::Edit => enc.encode_edit(&g.prompt, &imgs[0]).unwrap(),
        Template::Plus => enc.encode_plus(&g.prompt, &imgs).unwrap(),
    };
    assert!(pe.mask.is_none());
    let e = rel_err(&pe.embeds, g.get("prompt_embeds"));
    println!("{name} end-to-end prompt_embeds relative error {e:.3e}");
    let all_exact = ours.iter().zip(&gold_imgs).all(|(o, w)| max_abs(&(&o.pixel_values - &w.pixel_values).unwrap()) == 0.0);
    if all_exact {
        assert!(e <= REL_TOL, "{name} end-to-end prompt_embeds relative error {e:.3e}");
    }
}

fn have(path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    eprintln!("skipping: {} not present (merge the `fixtures` branch)", path.display());
    false
}

#[test]
fn edit_template_matches_reference() {
    if !have(&root().join("golden/text_encoder_edit.safetensors")) {
        return;
    }
    check("tiny-edit", "edit", Template::Edit, &["text_encoder_edit_img0.png"]);
}

#[test]
fn plus_template_matches_reference() {
    if !have(&root().join("golden/text_encoder_plus.safetensors")) {
        return;
    }
    check("tiny-plus", "plus", Template::Plus, &["text_encoder_plus_img0.png", "text_encoder_plus_img1.png"]);
}
