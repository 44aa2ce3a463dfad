//! Opens every fixture under `tests/fixtures/` (tiny model folders, tokenizer, golden tensors) and checks names,
//! dtypes and shapes against the fixture contract, so that a broken or half-regenerated fixture fails here first,
//! before any numerical parity test. Uses only `safetensors` and `serde_json`.
//!
//! The contract is described in `tests/fixtures/README.md`; the generator lives in `tests/fixtures/generate/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const ANY: isize = -1;
const MB: u64 = 1_000_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

fn golden(name: &str) -> PathBuf {
    root().join("golden").join(name)
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()))
}

/// A safetensors file held in memory.
struct St {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl St {
    fn open(path: PathBuf) -> St {
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = St { path, bytes };
        st.st(); // parse once to fail early
        st
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes)
            .unwrap_or_else(|e| panic!("{}: not a safetensors file: {e:?}", self.path.display()))
    }

    fn names(&self) -> BTreeSet<String> {
        self.st().names().into_iter().map(|s| s.to_string()).collect()
    }

    fn metadata(&self) -> HashMap<String, String> {
        let (_, md) = SafeTensors::read_metadata(&self.bytes).unwrap();
        md.metadata().clone().unwrap_or_default()
    }

    fn meta(&self, key: &str) -> String {
        self.metadata()
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{}: metadata key {key:?} missing", self.path.display()))
    }

    fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }

    fn shape(&self, name: &str) -> Vec<usize> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| {
            panic!(
                "{}: tensor {name:?} missing (have {:?})",
                self.path.display(),
                self.names()
            )
        });
        t.shape().to_vec()
    }

    fn dtype(&self, name: &str) -> Dtype {
        self.st().tensor(name).unwrap().dtype()
    }

    /// Checks dtype and shape (`ANY` = any size in that dim) and returns the actual shape.
    fn expect(&self, name: &str, dtype: Dtype, dims: &[isize]) -> Vec<usize> {
        let shape = self.shape(name);
        let dt = self.dtype(name);
        assert_eq!(
            dt,
            dtype,
            "{}: {name}: dtype {dt:?}, expected {dtype:?}",
            self.path.display()
        );
        let ok = shape.len() == dims.len() && shape.iter().zip(dims).all(|(&s, &d)| d == ANY || s as isize == d);
        assert!(
            ok,
            "{}: {name}: shape {shape:?}, expected {dims:?}",
            self.path.display()
        );
        shape
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{}: {name} is not F32", self.path.display());
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn i64s(&self, name: &str) -> Vec<i64> {
        let st = self.st();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I64, "{}: {name} is not I64", self.path.display());
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect()
    }

    /// All F32 tensors finite, no tensor has a dtype outside `allowed`.
    fn check_all(&self, allowed: &[Dtype]) {
        for name in self.names() {
            let dt = self.dtype(&name);
            assert!(
                allowed.contains(&dt),
                "{}: {name}: dtype {dt:?} not in {allowed:?}",
                self.path.display()
            );
            if dt == Dtype::F32 {
                let bad = self.f32s(&name).iter().filter(|v| !v.is_finite()).count();
                assert_eq!(bad, 0, "{}: {name}: {bad} non-finite values", self.path.display());
            }
        }
    }

    fn expect_names(&self, expected: &BTreeSet<String>) {
        let names = self.names();
        let missing: Vec<_> = expected.difference(&names).collect();
        let extra: Vec<_> = names.difference(expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{}: missing {missing:?}, unexpected {extra:?}",
            self.path.display()
        );
    }
}

/// (width, height) from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        b.len() > 24 && &b[..8] == b"\x89PNG\r\n\x1a\n" && &b[12..16] == b"IHDR",
        "{}: not a PNG",
        path.display()
    );
    let w = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
    let h = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
    (w, h)
}

fn prod(s: &[usize]) -> usize {
    s.iter().product()
}

fn cfg_usize(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config key {key:?} missing / not an integer in {v}")) as usize
}

fn cfg_usizes(v: &Value, key: &str) -> Vec<usize> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("config key {key:?} missing / not a list"))
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn cfg_bools(v: &Value, key: &str) -> Vec<bool> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect()
}

// ------------------------------------------------------------------------------------------------------------------
// Tokenizer
// ------------------------------------------------------------------------------------------------------------------

const SPECIAL: [(&str, u64); 8] = [
    ("<|endoftext|>", 151643),
    ("<|im_start|>", 151644),
    ("<|im_end|>", 151645),
    ("<|vision_start|>", 151652),
    ("<|vision_end|>", 151653),
    ("<|vision_pad|>", 151654),
    ("<|image_pad|>", 151655),
    ("<|video_pad|>", 151656),
];

#[test]
fn tokenizer_json_and_special_ids() {
    let dir = root().join("tokenizer");
    for f in ["tokenizer.json", "PROVENANCE.md", "LICENSE"] {
        assert!(dir.join(f).is_file(), "{} missing", dir.join(f).display());
    }
    let tok = read_json(&dir.join("tokenizer.json"));
    assert_eq!(tok["model"]["type"], "BPE");
    assert_eq!(tok["model"]["vocab"].as_object().unwrap().len(), 151643);
    let added: HashMap<String, u64> = tok["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["content"].as_str().unwrap().to_string(), t["id"].as_u64().unwrap()))
        .collect();
    for (s, id) in SPECIAL {
        assert_eq!(added.get(s), Some(&id), "special token {s}");
    }
    let license = fs::read_to_string(dir.join("LICENSE")).unwrap();
    assert!(license.contains("MIT License"));
}

#[test]
fn processor_tokenizer_symlinks() {
    let target = root().join("tokenizer").join("tokenizer.json");
    let len = fs::metadata(&target).unwrap().len();
    for m in ["tiny-edit", "tiny-plus"] {
        let link = root().join("models").join(m).join("processor").join("tokenizer.json");
        let meta = fs::symlink_metadata(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        assert!(meta.file_type().is_symlink(), "{} must be a symlink", link.display());
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("../../../tokenizer/tokenizer.json")
        );
        assert_eq!(
            fs::metadata(&link).unwrap().len(),
            len,
            "{} does not resolve",
            link.display()
        );
        assert!(link.parent().unwrap().join("tokenizer_config.json").is_file());
    }
    assert!(root()
        .join("models/tiny-edit/processor/preprocessor_config.json")
        .is_file());
    assert!(root()
        .join("models/tiny-plus/processor/processor_config.json")
        .is_file());
}

// ------------------------------------------------------------------------------------------------------------------
// Model folders
// ------------------------------------------------------------------------------------------------------------------

fn model_dir(m: &str) -> PathBuf {
    root().join("models").join(m)
}

#[test]
fn model_index_and_configs() {
    for (m, class) in [
        ("tiny-edit", "QwenImageEditPipeline"),
        ("tiny-plus", "QwenImageEditPlusPipeline"),
    ] {
        let d = model_dir(m);
        let idx = read_json(&d.join("model_index.json"));
        assert_eq!(idx["_class_name"], class);
        assert_eq!(idx["transformer"][1], "QwenImageTransformer2DModel");
        assert_eq!(idx["vae"][1], "AutoencoderKLQwenImage");
        assert_eq!(idx["text_encoder"][1], "Qwen2_5_VLForConditionalGeneration");
        assert_eq!(idx["processor"][1], "Qwen2VLProcessor");
        assert_eq!(idx["scheduler"][1], "FlowMatchEulerDiscreteScheduler");
        assert!(idx["tokenizer"][0].is_null(), "tokenizer is not part of the fixture");

        let s = read_json(&d.join("scheduler/scheduler_config.json"));
        assert_eq!(s["use_dynamic_shifting"], true);
        assert_eq!(s["time_shift_type"], "exponential");
        assert_eq!(s["shift_terminal"].as_f64(), Some(0.02));
        assert_eq!(s["base_image_seq_len"], 256);
        assert_eq!(s["max_image_seq_len"], 8192);
        assert_eq!(s["base_shift"].as_f64(), Some(0.5));
        assert_eq!(s["max_shift"].as_f64(), Some(0.9));
    }
    // transformers
    let ta = read_json(&model_dir("tiny-edit").join("transformer/config.json"));
    assert_eq!(
        (
            cfg_usize(&ta, "in_channels"),
            cfg_usize(&ta, "out_channels"),
            cfg_usize(&ta, "num_attention_heads")
        ),
        (16, 4, 3)
    );
    assert_eq!(cfg_usizes(&ta, "axes_dims_rope"), vec![8, 4, 4]);
    assert!(!ta["zero_cond_t"].as_bool().unwrap_or(false));
    let tb = read_json(&model_dir("tiny-plus").join("transformer/config.json"));
    assert_eq!(
        (
            cfg_usize(&tb, "in_channels"),
            cfg_usize(&tb, "out_channels"),
            cfg_usize(&tb, "num_attention_heads")
        ),
        (64, 16, 2)
    );
    assert_eq!(cfg_usizes(&tb, "axes_dims_rope"), vec![8, 12, 12]);
    assert_eq!(tb["zero_cond_t"], true);
    // VAEs
    let va = read_json(&model_dir("tiny-edit").join("vae/config.json"));
    assert_eq!(cfg_usize(&va, "z_dim"), 4);
    assert_eq!(cfg_bools(&va, "temperal_downsample"), vec![false, true]);
    let vb = read_json(&model_dir("tiny-plus").join("vae/config.json"));
    assert_eq!(cfg_usize(&vb, "z_dim"), 16);
    assert_eq!(cfg_usizes(&vb, "dim_mult"), vec![1, 2, 4, 4]);
    assert_eq!(vb["latents_std"].as_array().unwrap().len(), 16);
    assert_eq!(vb["latents_mean"][0].as_f64(), Some(-0.7571));
    // text encoders: A flat (4.x), B nested (5.x)
    let ea = read_json(&model_dir("tiny-edit").join("text_encoder/config.json"));
    assert_eq!(ea["model_type"], "qwen2_5_vl");
    assert_eq!(cfg_usize(&ea, "hidden_size"), 16);
    assert_eq!(cfg_usize(&ea, "num_hidden_layers"), 2);
    assert_eq!(cfg_usize(&ea, "vocab_size"), 152064);
    assert_eq!(cfg_usizes(&ea["rope_scaling"], "mrope_section"), vec![1, 1, 2]);
    assert_eq!(cfg_usize(&ea["vision_config"], "out_hidden_size"), 16);
    assert!(ea.get("text_config").is_none());
    let eb = read_json(&model_dir("tiny-plus").join("text_encoder/config.json"));
    assert_eq!(cfg_usize(&eb["text_config"], "hidden_size"), 16);
    assert_eq!(
        cfg_usizes(&eb["text_config"]["rope_parameters"], "mrope_section"),
        vec![1, 1, 2]
    );
    assert_eq!(
        eb["text_config"]["rope_parameters"]["rope_theta"].as_f64(),
        Some(1_000_000.0)
    );
    for e in [&ea, &eb] {
        assert_eq!(cfg_usize(e, "image_token_id"), 151655);
        assert_eq!(cfg_usize(e, "vision_start_token_id"), 151652);
        assert_eq!(cfg_usize(e, "vision_end_token_id"), 151653);
    }
    // processors
    let pa = read_json(&model_dir("tiny-edit").join("processor/preprocessor_config.json"));
    let pb = read_json(&model_dir("tiny-plus").join("processor/processor_config.json"));
    for p in [&pa, &pb["image_processor"]] {
        assert_eq!(p["image_processor_type"], "Qwen2VLImageProcessor");
        assert_eq!(cfg_usize(p, "max_pixels"), 12845056);
        assert_eq!(cfg_usize(p, "min_pixels"), 3136);
        assert_eq!((cfg_usize(p, "patch_size"), cfg_usize(p, "merge_size")), (14, 2));
        assert_eq!(cfg_usize(p, "temporal_patch_size"), 2);
        assert_eq!(cfg_usize(p, "resample"), 3);
    }
}

/// Every key + shape of a QwenImageTransformer2DModel, derived from its config.json.
fn transformer_keys(cfg: &Value) -> BTreeMap<String, Vec<usize>> {
    let heads = cfg_usize(cfg, "num_attention_heads");
    let hd = cfg_usize(cfg, "attention_head_dim");
    let d = heads * hd;
    let (cin, cout, p) = (
        cfg_usize(cfg, "in_channels"),
        cfg_usize(cfg, "out_channels"),
        cfg_usize(cfg, "patch_size"),
    );
    let joint = cfg_usize(cfg, "joint_attention_dim");
    let mut k = BTreeMap::new();
    let lin = |k: &mut BTreeMap<String, Vec<usize>>, name: &str, o: usize, i: usize| {
        k.insert(format!("{name}.weight"), vec![o, i]);
        k.insert(format!("{name}.bias"), vec![o]);
    };
    lin(&mut k, "img_in", d, cin);
    k.insert("txt_norm.weight".into(), vec![joint]);
    lin(&mut k, "txt_in", d, joint);
    lin(&mut k, "time_text_embed.timestep_embedder.linear_1", d, 256);
    lin(&mut k, "time_text_embed.timestep_embedder.linear_2", d, d);
    lin(&mut k, "norm_out.linear", 2 * d, d);
    lin(&mut k, "proj_out", p * p * cout, d);
    for b in 0..cfg_usize(cfg, "num_layers") {
        let pre = format!("transformer_blocks.{b}");
        lin(&mut k, &format!("{pre}.img_mod.1"), 6 * d, d);
        lin(&mut k, &format!("{pre}.txt_mod.1"), 6 * d, d);
        for m in [
            "to_q",
            "to_k",
            "to_v",
            "add_q_proj",
            "add_k_proj",
            "add_v_proj",
            "to_out.0",
            "to_add_out",
        ] {
            lin(&mut k, &format!("{pre}.attn.{m}"), d, d);
        }
        for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
            k.insert(format!("{pre}.attn.{n}.weight"), vec![hd]);
        }
        for s in ["img_mlp", "txt_mlp"] {
            lin(&mut k, &format!("{pre}.{s}.net.0.proj"), 4 * d, d);
            lin(&mut k, &format!("{pre}.{s}.net.2"), d, 4 * d);
        }
    }
    k
}

/// Every key + shape of an AutoencoderKLQwenImage (no attn_scales), derived from its config.json.
fn vae_keys(cfg: &Value) -> BTreeMap<String, Vec<usize>> {
    let base = cfg_usize(cfg, "base_dim");
    let z = cfg_usize(cfg, "z_dim");
    let mult = cfg_usizes(cfg, "dim_mult");
    let nres = cfg_usize(cfg, "num_res_blocks");
    let tdown = cfg_bools(cfg, "temperal_downsample");
    let mut k = BTreeMap::new();
    fn conv(k: &mut BTreeMap<String, Vec<usize>>, name: &str, o: usize, i: usize, ks: &[usize]) {
        let mut s = vec![o, i];
        s.extend_from_slice(ks);
        k.insert(format!("{name}.weight"), s);
        k.insert(format!("{name}.bias"), vec![o]);
    }
    fn res(k: &mut BTreeMap<String, Vec<usize>>, pre: &str, i: usize, o: usize) {
        k.insert(format!("{pre}.norm1.gamma"), vec![i, 1, 1, 1]);
        conv(k, &format!("{pre}.conv1"), o, i, &[3, 3, 3]);
        k.insert(format!("{pre}.norm2.gamma"), vec![o, 1, 1, 1]);
        conv(k, &format!("{pre}.conv2"), o, o, &[3, 3, 3]);
        if i != o {
            conv(k, &format!("{pre}.conv_shortcut"), o, i, &[1, 1, 1]);
        }
    }
    fn mid(k: &mut BTreeMap<String, Vec<usize>>, pre: &str, c: usize) {
        res(k, &format!("{pre}.resnets.0"), c, c);
        res(k, &format!("{pre}.resnets.1"), c, c);
        k.insert(format!("{pre}.attentions.0.norm.gamma"), vec![c, 1, 1]);
        conv(k, &format!("{pre}.attentions.0.to_qkv"), 3 * c, c, &[1, 1]);
        conv(k, &format!("{pre}.attentions.0.proj"), c, c, &[1, 1]);
    }
    // encoder
    let mut dims = vec![base];
    dims.extend(mult.iter().map(|m| base * m));
    conv(&mut k, "encoder.conv_in", dims[0], 3, &[3, 3, 3]);
    let mut idx = 0;
    for lvl in 0..mult.len() {
        let (mut i, o) = (dims[lvl], dims[lvl + 1]);
        for _ in 0..nres {
            res(&mut k, &format!("encoder.down_blocks.{idx}"), i, o);
            i = o;
            idx += 1;
        }
        if lvl != mult.len() - 1 {
            conv(&mut k, &format!("encoder.down_blocks.{idx}.resample.1"), o, o, &[3, 3]);
            if tdown[lvl] {
                conv(
                    &mut k,
                    &format!("encoder.down_blocks.{idx}.time_conv"),
                    o,
                    o,
                    &[3, 1, 1],
                );
            }
            idx += 1;
        }
    }
    let top = *dims.last().unwrap();
    mid(&mut k, "encoder.mid_block", top);
    k.insert("encoder.norm_out.gamma".into(), vec![top, 1, 1, 1]);
    conv(&mut k, "encoder.conv_out", 2 * z, top, &[3, 3, 3]);
    conv(&mut k, "quant_conv", 2 * z, 2 * z, &[1, 1, 1]);
    conv(&mut k, "post_quant_conv", z, z, &[1, 1, 1]);
    // decoder
    let mut ddims = vec![base * mult[mult.len() - 1]];
    ddims.extend(mult.iter().rev().map(|m| base * m));
    let tup: Vec<bool> = tdown.iter().rev().cloned().collect();
    conv(&mut k, "decoder.conv_in", ddims[0], z, &[3, 3, 3]);
    mid(&mut k, "decoder.mid_block", ddims[0]);
    for b in 0..mult.len() {
        let (mut i, o) = (ddims[b], ddims[b + 1]);
        if b > 0 {
            i /= 2;
        }
        for r in 0..=nres {
            res(&mut k, &format!("decoder.up_blocks.{b}.resnets.{r}"), i, o);
            i = o;
        }
        if b != mult.len() - 1 {
            conv(
                &mut k,
                &format!("decoder.up_blocks.{b}.upsamplers.0.resample.1"),
                o / 2,
                o,
                &[3, 3],
            );
            if tup[b] {
                conv(
                    &mut k,
                    &format!("decoder.up_blocks.{b}.upsamplers.0.time_conv"),
                    2 * o,
                    o,
                    &[3, 1, 1],
                );
            }
        }
    }
    let last = *ddims.last().unwrap();
    k.insert("decoder.norm_out.gamma".into(), vec![last, 1, 1, 1]);
    conv(&mut k, "decoder.conv_out", 3, last, &[3, 3, 3]);
    k
}

/// Every key + shape of the tiny Qwen2.5-VL text encoder in the transformers-5 naming (lm_head excluded).
fn text_encoder_keys(cfg: &Value) -> BTreeMap<String, Vec<usize>> {
    let tc = if cfg.get("text_config").is_some() {
        &cfg["text_config"]
    } else {
        cfg
    };
    let vc = &cfg["vision_config"];
    let h = cfg_usize(tc, "hidden_size");
    let heads = cfg_usize(tc, "num_attention_heads");
    let kv = cfg_usize(tc, "num_key_value_heads");
    let hd = h / heads;
    let inter = cfg_usize(tc, "intermediate_size");
    let mut k = BTreeMap::new();
    k.insert(
        "model.language_model.embed_tokens.weight".to_string(),
        vec![cfg_usize(tc, "vocab_size"), h],
    );
    for l in 0..cfg_usize(tc, "num_hidden_layers") {
        let p = format!("model.language_model.layers.{l}");
        for (n, o) in [("q_proj", heads * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)] {
            k.insert(format!("{p}.self_attn.{n}.weight"), vec![o, h]);
            k.insert(format!("{p}.self_attn.{n}.bias"), vec![o]);
        }
        k.insert(format!("{p}.self_attn.o_proj.weight"), vec![h, heads * hd]);
        k.insert(format!("{p}.mlp.gate_proj.weight"), vec![inter, h]);
        k.insert(format!("{p}.mlp.up_proj.weight"), vec![inter, h]);
        k.insert(format!("{p}.mlp.down_proj.weight"), vec![h, inter]);
        k.insert(format!("{p}.input_layernorm.weight"), vec![h]);
        k.insert(format!("{p}.post_attention_layernorm.weight"), vec![h]);
    }
    k.insert("model.language_model.norm.weight".into(), vec![h]);
    let vh = cfg_usize(vc, "hidden_size");
    let vi = cfg_usize(vc, "intermediate_size");
    let ps = cfg_usize(vc, "patch_size");
    let tp = cfg_usize(vc, "temporal_patch_size");
    let m = cfg_usize(vc, "spatial_merge_size");
    let out = cfg_usize(vc, "out_hidden_size");
    k.insert("model.visual.patch_embed.proj.weight".into(), vec![vh, 3, tp, ps, ps]);
    for b in 0..cfg_usize(vc, "depth") {
        let p = format!("model.visual.blocks.{b}");
        k.insert(format!("{p}.norm1.weight"), vec![vh]);
        k.insert(format!("{p}.norm2.weight"), vec![vh]);
        k.insert(format!("{p}.attn.qkv.weight"), vec![3 * vh, vh]);
        k.insert(format!("{p}.attn.qkv.bias"), vec![3 * vh]);
        k.insert(format!("{p}.attn.proj.weight"), vec![vh, vh]);
        k.insert(format!("{p}.attn.proj.bias"), vec![vh]);
        for (n, o, i) in [("gate_proj", vi, vh), ("up_proj", vi, vh), ("down_proj", vh, vi)] {
            k.insert(format!("{p}.mlp.{n}.weight"), vec![o, i]);
            k.insert(format!("{p}.mlp.{n}.bias"), vec![o]);
        }
    }
    let mh = vh * m * m;
    k.insert("model.visual.merger.ln_q.weight".into(), vec![vh]);
    k.insert("model.visual.merger.mlp.0.weight".into(), vec![mh, mh]);
    k.insert("model.visual.merger.mlp.0.bias".into(), vec![mh]);
    k.insert("model.visual.merger.mlp.2.weight".into(), vec![out, mh]);
    k.insert("model.visual.merger.mlp.2.bias".into(), vec![out]);
    k
}

/// transformers-5 key -> legacy (Hub / transformers-4.x) key.
fn legacy(k: &str) -> String {
    if let Some(r) = k.strip_prefix("model.language_model.") {
        format!("model.{r}")
    } else if let Some(r) = k.strip_prefix("model.visual.") {
        format!("visual.{r}")
    } else {
        k.to_string()
    }
}

fn check_weights(file: &St, expected: &BTreeMap<String, Vec<usize>>) {
    file.expect_names(&expected.keys().cloned().collect());
    for (name, shape) in expected {
        let dims: Vec<isize> = shape.iter().map(|&d| d as isize).collect();
        file.expect(name, Dtype::BF16, &dims);
    }
    assert_eq!(file.meta("format"), "pt");
}

#[test]
fn model_weights() {
    for m in ["tiny-edit", "tiny-plus"] {
        let d = model_dir(m);
        let tcfg = read_json(&d.join("transformer/config.json"));
        let t = St::open(d.join("transformer/diffusion_pytorch_model.safetensors"));
        check_weights(&t, &transformer_keys(&tcfg));
        assert_eq!(t.names().len(), 77);

        let vcfg = read_json(&d.join("vae/config.json"));
        let v = St::open(d.join("vae/diffusion_pytorch_model.safetensors"));
        check_weights(&v, &vae_keys(&vcfg));
        assert_eq!(v.names().len(), if m == "tiny-edit" { 118 } else { 194 });

        let ecfg = read_json(&d.join("text_encoder/config.json"));
        let e = St::open(d.join("text_encoder/model.safetensors"));
        let mut keys = text_encoder_keys(&ecfg);
        if m == "tiny-edit" {
            keys = keys.into_iter().map(|(k, v)| (legacy(&k), v)).collect();
            assert!(e.has("model.embed_tokens.weight") && e.has("visual.patch_embed.proj.weight"));
        } else {
            assert!(e.has("model.language_model.embed_tokens.weight") && e.has("model.visual.merger.mlp.2.bias"));
        }
        assert!(!e.has("lm_head.weight"), "lm_head.weight must be dropped");
        check_weights(&e, &keys);
        assert_eq!(e.names().len(), 56);
    }
    // both text encoders hold the same weights
    let a = St::open(model_dir("tiny-edit").join("text_encoder/model.safetensors"));
    let b = St::open(model_dir("tiny-plus").join("text_encoder/model.safetensors"));
    let (sa, sb) = (a.st(), b.st());
    for name in b.names() {
        let ta = sa.tensor(&legacy(&name)).unwrap();
        let tb = sb.tensor(&name).unwrap();
        assert!(ta.data() == tb.data(), "text encoders differ at {name}");
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Goldens
// ------------------------------------------------------------------------------------------------------------------

#[test]
fn transformer_goldens() {
    // case, model, zero_cond_t, img_shapes, S_txt, C_in, C_out, D (inner dim), masked
    #[allow(clippy::type_complexity)]
    let cases: [(&str, &str, bool, &[[usize; 3]], usize, usize, usize, usize, bool); 6] = [
        (
            "a_1ref",
            "tiny-edit",
            false,
            &[[1, 4, 6], [1, 6, 4]],
            7,
            16,
            16,
            48,
            false,
        ),
        (
            "a_1ref_mask",
            "tiny-edit",
            false,
            &[[1, 4, 6], [1, 6, 4]],
            7,
            16,
            16,
            48,
            true,
        ),
        (
            "b_2ref_zc",
            "tiny-plus",
            true,
            &[[1, 4, 6], [1, 6, 4], [1, 3, 5]],
            9,
            64,
            64,
            64,
            false,
        ),
        (
            "b_2ref_zc_mask",
            "tiny-plus",
            true,
            &[[1, 4, 6], [1, 6, 4], [1, 3, 5]],
            9,
            64,
            64,
            64,
            true,
        ),
        (
            "b_2ref_nozc",
            "tiny-plus",
            false,
            &[[1, 4, 6], [1, 6, 4], [1, 3, 5]],
            9,
            64,
            64,
            64,
            false,
        ),
        (
            "b_1ref_zc",
            "tiny-plus",
            true,
            &[[1, 4, 6], [1, 6, 4]],
            9,
            64,
            64,
            64,
            false,
        ),
    ];
    for (case, model, zc, shapes, s_txt, c_in, c_out, d, masked) in cases {
        let f = St::open(golden(&format!("transformer_{case}.safetensors")));
        f.check_all(&[Dtype::F32, Dtype::I64]);
        let s_img: usize = shapes.iter().map(|s| s[0] * s[1] * s[2]).sum();
        let (s_img, s_txt) = (s_img as isize, s_txt as isize);
        f.expect("hidden_states", Dtype::F32, &[1, s_img, c_in as isize]);
        f.expect("encoder_hidden_states", Dtype::F32, &[1, s_txt, 16]);
        f.expect("timestep", Dtype::F32, &[1]);
        f.expect("img_shapes", Dtype::I64, &[shapes.len() as isize, 3]);
        let got: Vec<usize> = f.i64s("img_shapes").iter().map(|&v| v as usize).collect();
        let want: Vec<usize> = shapes.iter().flatten().cloned().collect();
        assert_eq!(got, want, "{case}: img_shapes");
        f.expect("output", Dtype::F32, &[1, s_img, c_out as isize]);
        assert_eq!(f.has("encoder_hidden_states_mask"), masked, "{case}: mask presence");
        if masked {
            f.expect("encoder_hidden_states_mask", Dtype::F32, &[1, s_txt]);
            let m = f.f32s("encoder_hidden_states_mask");
            assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
            assert_eq!(&m[m.len() - 2..], &[0.0, 0.0], "{case}: last two text tokens masked");
        }
        let t = f.f32s("timestep")[0];
        assert!(t > 0.0 && t < 1.0, "{case}: timestep must be sigma (already /1000)");
        let d = d as isize;
        f.expect("dbg.temb", Dtype::F32, &[if zc { 2 } else { 1 }, d]);
        f.expect("dbg.txt_in", Dtype::F32, &[1, s_txt, d]);
        f.expect("dbg.img_in", Dtype::F32, &[1, s_img, d]);
        f.expect("dbg.block0.img", Dtype::F32, &[1, s_img, d]);
        f.expect("dbg.block0.txt", Dtype::F32, &[1, s_txt, d]);
        f.expect("dbg.norm_out", Dtype::F32, &[1, s_img, d]);
        assert_eq!(f.meta("model"), model);
        assert_eq!(f.meta("zero_cond_t"), if zc { "true" } else { "false" });
    }
}

#[test]
fn vae_goldens() {
    for (model, z, f, h, w, dbg) in [
        ("a", 4usize, 4usize, 64usize, 48usize, true),
        ("a", 4, 4, 40, 56, false),
        ("b", 16, 8, 64, 64, true),
        ("b", 16, 8, 96, 80, false),
    ] {
        let file = St::open(golden(&format!("vae_{model}_{h}x{w}.safetensors")));
        file.check_all(&[Dtype::F32]);
        let (zi, hi, wi, lh, lw) = (z as isize, h as isize, w as isize, (h / f) as isize, (w / f) as isize);
        file.expect("image", Dtype::F32, &[1, 3, hi, wi]);
        file.expect("latent_mean", Dtype::F32, &[1, zi, lh, lw]);
        file.expect("decode_input", Dtype::F32, &[1, zi, lh, lw]);
        file.expect("decoded", Dtype::F32, &[1, 3, hi, wi]);
        let img = file.f32s("image");
        assert!(img.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(
            file.f32s("decoded").iter().all(|v| (-1.0..=1.0).contains(v)),
            "decoded is clamped"
        );
        let n_dbg = file.names().iter().filter(|n| n.starts_with("dbg.")).count();
        if dbg {
            for n in [
                "dbg.enc.conv_in",
                "dbg.enc.mid_block",
                "dbg.quant_conv",
                "dbg.post_quant_conv",
                "dbg.dec.conv_out",
            ] {
                assert!(file.has(n), "vae_{model}_{h}x{w}: {n} missing");
            }
            file.expect("dbg.quant_conv", Dtype::F32, &[1, 2 * zi, lh, lw]);
            file.expect("dbg.enc.conv_in", Dtype::F32, &[1, ANY, hi, wi]);
            file.expect("dbg.dec.conv_out", Dtype::F32, &[1, 3, hi, wi]);
        } else {
            assert_eq!(n_dbg, 0);
        }
        let expected_model = if model == "a" { "tiny-edit" } else { "tiny-plus" };
        assert_eq!(file.meta("model"), expected_model);
    }
    let t = St::open(golden("vae_b_tiled_320x384.safetensors"));
    t.check_all(&[Dtype::F32]);
    t.expect("image", Dtype::F32, &[1, 3, 320, 384]);
    t.expect("latent_mean", Dtype::F32, &[1, 16, 40, 48]);
    t.expect("latent_mean_untiled", Dtype::F32, &[1, 16, 40, 48]);
    t.expect("decode_input", Dtype::F32, &[1, 16, 40, 48]);
    t.expect("decoded", Dtype::F32, &[1, 3, 320, 384]);
    t.expect("decoded_untiled", Dtype::F32, &[1, 3, 320, 384]);
}

#[test]
fn text_encoder_goldens() {
    for (name, model, n_images, pngs) in [
        (
            "text_encoder_edit",
            "tiny-edit",
            1usize,
            &["text_encoder_edit_img0"][..],
        ),
        (
            "text_encoder_plus",
            "tiny-plus",
            2,
            &["text_encoder_plus_img0", "text_encoder_plus_img1"][..],
        ),
    ] {
        let f = St::open(golden(&format!("{name}.safetensors")));
        f.check_all(&[Dtype::F32, Dtype::I64]);
        let l = f.expect("input_ids", Dtype::I64, &[1, ANY])[1];
        let li = l as isize;
        f.expect("attention_mask", Dtype::I64, &[1, li]);
        f.expect("image_grid_thw", Dtype::I64, &[n_images as isize, 3]);
        f.expect("position_ids", Dtype::I64, &[3, 1, li]);
        f.expect("last_hidden_state", Dtype::F32, &[1, li, 16]);
        f.expect("prompt_embeds", Dtype::F32, &[1, li - 64, 16]);
        f.expect("dbg.inputs_embeds", Dtype::F32, &[1, li, 16]);
        f.expect("dbg.pixel_values_head", Dtype::F32, &[16, 1176]);
        assert!(
            !f.has("pixel_values"),
            "pixel_values are rebuilt from the *_vl.png images"
        );

        let ids = f.i64s("input_ids");
        assert!(f.i64s("attention_mask").iter().all(|&m| m == 1));
        let grid = f.i64s("image_grid_thw");
        let n_tokens: usize = grid.chunks(3).map(|g| (g[0] * g[1] * g[2] / 4) as usize).sum();
        assert_eq!(
            ids.iter().filter(|&&t| t == 151655).count(),
            n_tokens,
            "{name}: <|image_pad|> count"
        );
        assert_eq!(ids.iter().filter(|&&t| t == 151652).count(), n_images);
        assert_eq!(ids.iter().filter(|&&t| t == 151653).count(), n_images);
        assert_eq!(ids[0], 151644, "starts with <|im_start|>");
        assert_eq!(
            &ids[l - 5..],
            &[151645, 198, 151644, 77091, 198],
            "ends with <|im_end|>\\n<|im_start|>assistant\\n"
        );
        f.expect("dbg.vision_embeds", Dtype::F32, &[n_tokens as isize, 16]);
        // prompt_embeds = last_hidden_state[:, 64:]
        let (lh, pe) = (f.f32s("last_hidden_state"), f.f32s("prompt_embeds"));
        assert!(
            lh[64 * 16..] == pe[..],
            "{name}: prompt_embeds != last_hidden_state[:, 64:]"
        );
        // 3-D positions: text tokens have equal t/h/w ids; the first image token sits right after <|vision_start|>
        let pos = f.i64s("position_ids");
        let first_img = ids.iter().position(|&t| t == 151655).unwrap();
        assert_eq!(pos[first_img], pos[first_img - 1] + 1);
        assert_eq!((pos[0], pos[l], pos[2 * l]), (0, 0, 0));
        // processor input PNGs and the processor-resized ones (grid * 14)
        for (i, png) in pngs.iter().enumerate() {
            let (w, h) = png_size(&golden(&format!("{png}.png")));
            assert!(w > 0 && h > 0);
            let (vw, vh) = png_size(&golden(&format!("{png}_vl.png")));
            assert_eq!(
                (vh as i64, vw as i64),
                (grid[3 * i + 1] * 14, grid[3 * i + 2] * 14),
                "{png}_vl.png size"
            );
        }
        assert_eq!(f.meta("model"), model);
        assert!(!f.meta("prompt").is_ascii(), "prompts contain non-ASCII text");
        assert!(f.meta("template").starts_with("<|im_start|>system\n"));
    }
    // Edit v1 feeds the ~1 MP image, Plus the 384^2-area ones
    let e = St::open(golden("text_encoder_edit.safetensors")).i64s("image_grid_thw");
    assert!(e[1] * e[2] * 196 > 900_000, "edit processor image should be ~1 MP");
    let p = St::open(golden("text_encoder_plus.safetensors")).i64s("image_grid_thw");
    assert!(p.chunks(3).all(|g| g[1] * g[2] * 196 < 200_000) && p[1..3] != p[4..6]);
}

#[test]
fn scheduler_json() {
    let doc = read_json(&golden("scheduler.json"));
    let cases = doc["cases"].as_array().unwrap();
    let mut seen = BTreeSet::new();
    for c in cases {
        let cfg = c["config"].as_str().unwrap().to_string();
        let steps = c["steps"].as_u64().unwrap() as usize;
        let seq = c["image_seq_len"].as_u64().unwrap();
        assert!(c["mu"].is_number());
        let sig = c["sigmas"].as_array().unwrap();
        let ts = c["timesteps"].as_array().unwrap();
        assert_eq!(sig.len(), steps + 1);
        assert_eq!(ts.len(), steps);
        assert_eq!(sig[steps].as_f64(), Some(0.0));
        if steps > 1 {
            assert_eq!(sig[0].as_f64(), Some(1.0));
            assert!(
                sig.iter().chain(ts.iter()).all(|v| v.is_number()),
                "{cfg} {steps} {seq}: non-number"
            );
        } else if cfg == "qwen" {
            // N = 1 with shift_terminal: the reference computes 0/0 -> NaN, stored as null
            assert!(sig[0].is_null() && ts[0].is_null(), "qwen N=1 should be NaN (null)");
        }
        seen.insert((cfg, steps, seq));
    }
    for steps in [1, 2, 4, 8, 28, 40, 50] {
        for seq in [1024, 3600, 4096] {
            assert!(
                seen.contains(&("qwen".to_string(), steps, seq)),
                "qwen {steps} steps @ {seq}"
            );
        }
    }
    for steps in [4, 8] {
        assert!(seen.contains(&("lightning".to_string(), steps, 1024)));
    }
}

#[test]
fn randn_golden() {
    let f = St::open(golden("randn.safetensors"));
    f.check_all(&[Dtype::F32, Dtype::BF16]);
    let shapes: [&[usize]; 6] = [
        &[1, 1, 16, 128, 128],
        &[1, 1, 16, 13, 7],
        &[1, 1, 4, 8, 8],
        &[1, 1, 3, 5, 7],
        &[3, 5],
        &[7],
    ];
    for seed in [0u64, 42, (1u64 << 32) + 7, 123456789] {
        for s in shapes {
            if s.len() == 5 && s[3] == 128 && seed != 0 {
                continue; // the 1 MiB shape is stored for seed 0 only
            }
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            let dims = dims.join("x");
            let si: Vec<isize> = s.iter().map(|&d| d as isize).collect();
            f.expect(&format!("seed{seed}_f32_{dims}"), Dtype::F32, &si);
            f.expect(&format!("seed{seed}_bf16_{dims}"), Dtype::BF16, &si);
            let n = prod(s);
            assert_eq!(
                f.has(&format!("scalar.seed{seed}_f32_{dims}")),
                (16..=4096).contains(&n)
            );
        }
    }
}

#[test]
fn pipeline_goldens() {
    // name, model, #inputs, steps, out (h, w), latent channels*4, vae factor
    for (name, model, n_in, steps, (h, w), c4, vf) in [
        (
            "pipeline_edit",
            "tiny-edit",
            1usize,
            3usize,
            (56usize, 40usize),
            16usize,
            4usize,
        ),
        ("pipeline_plus", "tiny-plus", 2, 2, (64, 48), 64, 8),
    ] {
        let f = St::open(golden(&format!("{name}.safetensors")));
        f.check_all(&[Dtype::F32]);
        let n_out = ((h / vf / 2) * (w / vf / 2)) as isize;
        let c4 = c4 as isize;
        f.expect("initial_latents", Dtype::F32, &[1, n_out, c4]);
        let n_img = f.expect("image_latents", Dtype::F32, &[1, ANY, c4])[1];
        f.expect("prompt_embeds", Dtype::F32, &[1, ANY, 16]);
        f.expect("negative_prompt_embeds", Dtype::F32, &[1, ANY, 16]);
        f.expect("timesteps", Dtype::F32, &[steps as isize]);
        for i in 0..steps {
            f.expect(&format!("latents_step{i}"), Dtype::F32, &[1, n_out, c4]);
        }
        assert!(!f.has(&format!("latents_step{steps}")));
        f.expect("output", Dtype::F32, &[1, 3, h as isize, w as isize]);
        assert!(f.f32s("output").iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(f.f32s("timesteps")[0], 1000.0);
        let call: Value = serde_json::from_str(&f.meta("call")).unwrap();
        assert_eq!(call["num_inference_steps"].as_u64(), Some(steps as u64));
        assert_eq!(call["true_cfg_scale"].as_f64(), Some(4.0));
        assert_eq!(call["negative_prompt"], " ");
        assert_eq!(f.meta("model"), model);
        // img_shapes: noise grid first, then one entry per reference image whose tokens fill image_latents
        let shapes: Value = serde_json::from_str(&f.meta("img_shapes")).unwrap();
        let shapes = shapes[0].as_array().unwrap();
        assert_eq!(shapes.len(), 1 + n_in);
        let tok = |s: &Value| -> usize {
            s.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .product()
        };
        assert_eq!(tok(&shapes[0]) as isize, n_out);
        assert_eq!(shapes[1..].iter().map(tok).sum::<usize>(), n_img);
        let inputs: Vec<String> = (0..n_in).map(|i| format!("{name}_input{i}.png")).collect();
        for p in &inputs {
            png_size(&golden(p));
        }
        assert_eq!(png_size(&golden(&format!("{name}_output.png"))), (w as u32, h as u32));
    }
    assert_eq!(png_size(&golden("pipeline_edit_input0.png")), (40, 56));
    assert_eq!(png_size(&golden("pipeline_plus_input0.png")), (48, 32));
    assert_eq!(png_size(&golden("pipeline_plus_input1.png")), (32, 40));
}

// ------------------------------------------------------------------------------------------------------------------
// LoRA fixtures (gen_lora.py)
// ------------------------------------------------------------------------------------------------------------------

#[test]
fn lora_files_and_goldens_open() {
    for (layout, keys, dtype, prefix) in [
        ("diffusers", 64, Dtype::F32, "transformer."),
        ("kohya", 96, Dtype::F32, "lora_unet_"),
        ("diffsynth", 64, Dtype::F32, "transformer_blocks."),
        ("lightx2v", 96, Dtype::BF16, "diffusion_model."),
    ] {
        let path = root().join("lora").join(format!("tiny_plus_{layout}.safetensors"));
        let bytes = fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), keys, "{layout}");
        for (name, view) in st.tensors() {
            assert_eq!(view.dtype(), dtype, "{layout} {name}");
            assert!(name.starts_with(prefix) || !name.contains("blocks"), "{layout} {name}");
        }
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let has_peft_meta = meta
            .metadata()
            .as_ref()
            .is_some_and(|m| m.contains_key("lora_adapter_metadata"));
        assert_eq!(has_peft_meta, layout == "diffusers", "{layout}");
    }
    let bytes = fs::read(golden("lora_transformer.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for layout in ["diffusers", "kohya", "diffsynth", "lightx2v"] {
        for scale in ["1.0", "0.5"] {
            let t = st.tensor(&format!("output.{layout}.scale{scale}")).unwrap();
            assert_eq!(t.shape(), [1, 63, 64]);
        }
    }
    assert_eq!(st.tensor("output.base").unwrap().shape(), [1, 63, 64]);
    let bytes = fs::read(golden("lora_pipeline_plus.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("output").unwrap().shape(), [1, 3, 48, 32]);
    assert!(st.tensor("latents_step1").is_ok());
    let v: Value = serde_json::from_str(&fs::read_to_string(golden("lightning.json")).unwrap()).unwrap();
    assert_eq!(v["steps4"]["sigmas"].as_array().unwrap().len(), 5);
    assert_eq!(v["steps8"]["sigmas"].as_array().unwrap().len(), 9);
}

// ------------------------------------------------------------------------------------------------------------------
// Size budget
// ------------------------------------------------------------------------------------------------------------------

fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let p = e.path();
        if ft.is_symlink() {
            continue;
        }
        if ft.is_dir() {
            if p.file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            walk(&p, out);
        } else {
            out.push((p, e.metadata().unwrap().len()));
        }
    }
}

#[test]
fn fixture_size_budget() {
    let mut files = Vec::new();
    walk(&root(), &mut files);
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    assert!(total <= 40 * MB, "fixture tree is {total} bytes (> 40 MB)");
    for (p, s) in &files {
        let rel = p.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
        let allowed_big = rel == "tokenizer/tokenizer.json" || rel.ends_with("text_encoder/model.safetensors");
        assert!(allowed_big || *s <= 5 * MB, "{rel} is {s} bytes (> 5 MB)");
    }
    // every golden file is covered by a test above
    let known = [
        "transformer_",
        "vae_",
        "text_encoder_",
        "pipeline_",
        "scheduler.json",
        "randn.safetensors",
        "lora_",
        "lightning.json",
        "bf16_drift.json",
    ];
    for e in fs::read_dir(root().join("golden")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            known.iter().any(|k| n.starts_with(k)),
            "golden/{n} is not checked by fixtures_open.rs"
        );
    }
}

/// golden/bf16_drift.json (gen_bf16_drift.py): diffusers' own bf16 drift from its f32 goldens, which bounds
/// the GPU bf16 tests. Every entry a relative error in (0, 1), the worst step the maximum of the steps.
#[test]
fn bf16_drift_is_complete() {
    let v = read_json(&golden("bf16_drift.json"));
    let rel = |x: &Value| {
        let f = x.as_f64().expect("a number");
        assert!(f > 0.0 && f < 1.0, "drift {f} out of (0, 1)");
        f
    };
    for p in ["pipeline_edit", "pipeline_plus"] {
        let steps: Vec<f64> = v[p]["latents_per_step"].as_array().unwrap().iter().map(rel).collect();
        assert!(!steps.is_empty());
        let worst = rel(&v[p]["latents_worst"]);
        assert_eq!(worst, steps.iter().cloned().fold(0.0, f64::max), "{p}: latents_worst");
        for k in ["image_latents", "prompt_embeds", "negative_prompt_embeds"] {
            rel(&v[p][k]);
        }
    }
    for vae in ["vae_b_96x80", "vae_b_tiled_320x384"] {
        rel(&v[vae]["decode"]);
        rel(&v[vae]["encode"]);
    }
}
