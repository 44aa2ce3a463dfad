//! Parity of the prompt encoder with transformers 5.2.0 / diffusers 0.42.1 (f32, CPU).
//!
//! Golden files (`tests/fixtures/golden/text_encoder_{edit,plus}.safetensors`) hold the processor
//! outputs (`input_ids`, `attention_mask`, `pixel_values`, `image_grid_thw`), the 3-D positions of
//! `get_rope_index`, the vision features (`dbg.vision_embeds`), the language model's input embeddings
//! (`dbg.inputs_embeds`), the final hidden states and the pipeline's `prompt_embeds`, plus the prompt
//! and template as metadata. The processor inputs are the PNGs next to them.

use std::collections::HashMap;
use std::path::PathBuf;

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
        self.get(k)
            .flatten_all()
            .unwrap()
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
    }
}

fn image(name: &str) -> image::RgbImage {
    let path = root().join("golden").join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
        .to_rgb8()
}

fn encoder(model: &str) -> PromptEncoder {
    let dir = root().join("models").join(model);
    PromptEncoder::load(
        &dir.join("text_encoder"),
        &dir.join("processor"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("cannot load {model}: {e:#}"))
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
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

fn load_png(name: &str) -> image::RgbImage {
    image(name)
}

/// Per-image comparison of our resize with the reference's (`*_vl.png` is the processor's PIL bicubic
/// output, uint8): (max |Δ| in levels, number of differing channel values, total values).
fn resize_diff(ours: &image::RgbImage, want: &image::RgbImage) -> (u8, usize, usize) {
    assert_eq!(ours.dimensions(), want.dimensions(), "resized size");
    let mut max = 0u8;
    let mut n = 0;
    for (a, b) in ours.as_raw().iter().zip(want.as_raw()) {
        let d = a.abs_diff(*b);
        if d > 0 {
            n += 1;
            max = max.max(d);
        }
    }
    (max, n, ours.as_raw().len())
}

fn check(model: &str, name: &str, template: Template, n_img: usize) {
    let g = golden(name);
    let enc = encoder(model);
    let render_n = if template == Template::Plus { 0 } else { n_img };
    assert_eq!(g.template, template.render("{}", render_n), "template");

    // 1. Image processor. `*_vl.png` are the reference's resized images: processing them needs no
    //    resize, so their pixel_values must match the reference exactly.
    let inputs: Vec<image::RgbImage> = (0..n_img)
        .map(|k| load_png(&format!("text_encoder_{name}_img{k}.png")))
        .collect();
    let vl: Vec<image::RgbImage> = (0..n_img)
        .map(|k| load_png(&format!("text_encoder_{name}_img{k}_vl.png")))
        .collect();
    let grids = g.ints("image_grid_thw");
    let exact: Vec<ProcessedImage> = vl.iter().map(|i| enc.process_image(i).unwrap()).collect();
    let ours: Vec<ProcessedImage> = inputs.iter().map(|i| enc.process_image(i).unwrap()).collect();
    for k in 0..n_img {
        let want = [
            grids[3 * k] as usize,
            grids[3 * k + 1] as usize,
            grids[3 * k + 2] as usize,
        ];
        assert_eq!(ours[k].grid_thw, want, "grid_thw of image {k}");
        assert_eq!(exact[k].grid_thw, want, "grid_thw of image {k} (_vl)");
        let (max, n, total) = resize_diff(&enc.resized_image(&inputs[k]).unwrap(), &vl[k]);
        let dpv = max_abs(&(&ours[k].pixel_values - &exact[k].pixel_values).unwrap());
        println!(
            "{name} image {k}: {}x{} -> {}x{}: resize differs from PIL in {n}/{total} values, max {max} levels; \
             pixel_values max |diff| {dpv:.4}",
            inputs[k].width(),
            inputs[k].height(),
            vl[k].width(),
            vl[k].height()
        );
    }
    let head = g.get("dbg.pixel_values_head");
    let rows = head.dim(0).unwrap();
    let got_head = exact[0].pixel_values.narrow(0, 0, rows).unwrap();
    assert_eq!(
        max_abs(&(&got_head - head).unwrap()),
        0.0,
        "pixel_values (from the reference-resized image) must be exact"
    );

    // 2. Token ids and positions.
    let ids = enc.build_input_ids(template, &g.prompt, &exact).unwrap();
    assert_eq!(
        ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        g.ints("input_ids"),
        "input_ids"
    );
    assert!(g.ints("attention_mask").iter().all(|&m| m == 1));
    assert_eq!(enc.drop_idx(), 64, "drop_idx");
    let pos = enc.rope_index(&ids, &exact).unwrap();
    assert_eq!(positions_flat(&pos), g.ints("position_ids"), "position_ids");

    // 3. Model on the exact pixel values.
    let vis = enc.vision_embeds(&exact).unwrap().unwrap();
    assert_close(&format!("{name} vision_embeds"), &vis, g.get("dbg.vision_embeds"));
    let emb = enc.inputs_embeds(&ids, &exact).unwrap();
    assert_close(&format!("{name} inputs_embeds"), &emb, g.get("dbg.inputs_embeds"));
    let hidden = enc.forward_hidden(&ids, &exact).unwrap();
    assert_close(
        &format!("{name} last_hidden_state"),
        &hidden,
        g.get("last_hidden_state"),
    );
    let (l, drop) = (ids.len(), enc.drop_idx());
    assert_close(
        &format!("{name} prompt_embeds"),
        &hidden.narrow(1, drop, l - drop).unwrap(),
        g.get("prompt_embeds"),
    );

    // 4. The public entry points on the reference-resized images (exact), then on the processor inputs
    //    (our resize; reported, asserted only if the resize is exact).
    let run = |imgs: &[image::RgbImage]| match template {
        Template::Edit => enc.encode_edit(&g.prompt, &imgs[0]).unwrap(),
        Template::Plus => enc.encode_plus(&g.prompt, imgs).unwrap(),
    };
    let pe = run(&vl);
    assert!(pe.mask.is_none());
    assert_close(
        &format!("{name} encode prompt_embeds"),
        &pe.embeds,
        g.get("prompt_embeds"),
    );
    let pe = run(&inputs);
    let e = rel_err(&pe.embeds, g.get("prompt_embeds"));
    let resize_exact = (0..n_img).all(|k| enc.resized_image(&inputs[k]).unwrap() == vl[k]);
    println!("{name} end-to-end from the processor inputs: prompt_embeds relative error {e:.3e} (resize exact: {resize_exact})");
    if resize_exact {
        assert!(e <= REL_TOL, "{name} end-to-end prompt_embeds relative error {e:.3e}");
    }
}

#[test]
fn edit_template_matches_reference() {
    check("tiny-edit", "edit", Template::Edit, 1);
}

#[test]
fn plus_template_matches_reference() {
    check("tiny-plus", "plus", Template::Plus, 2);
}
