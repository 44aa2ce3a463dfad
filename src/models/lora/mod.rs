//! LoRA adapters for the transformer, merged into the dense weights once, at load.
//!
//! A LoRA module adapting the Linear `m` (weight `[out, in]`) holds `down [r, in]` and `up [out, r]`
//! and optionally a scalar `alpha`; the merged weight is
//!
//! ```text
//! W' = W + Σ_adapters  scale · (alpha / r) · up @ down        (alpha absent → alpha = r)
//! ```
//!
//! computed in f32 on the target device and cast to the compute dtype once, which is what diffusers'
//! PEFT layers compute unmerged (`W x + scale · (alpha/r) · B(A x)`) and what the official Lightning
//! script merges (`generate_with_diffusers.py`). diffusers-format files carry `r` / `lora_alpha` in the
//! `lora_adapter_metadata` header entry (PEFT's `LoraConfig`; `use_rslora` makes it `alpha / √r`).
//!
//! [`keys`] reads every common key layout. Keys that adapt nothing in this transformer (another model's
//! modules, the text encoder, DoRA/LoHa/LoKr parts, a shape that does not fit) are collected with the
//! reason and refused by default ([`LoraMerge::new`] with `strict`), never silently dropped.
//!
//! [`LoraBackend`] wraps the memory-mapped [`ComponentWeights`] as a candle `VarBuilder` backend whose
//! `get` returns the merged weight, so the model code does not know about LoRA at all.

pub mod keys;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use self::keys::{KeyKind, Part};
use super::weights::ComponentWeights;
use crate::error::UserError;

/// Examples of rejected keys shown in a message.
const MAX_EXAMPLES: usize = 5;

/// One LoRA file to merge, already on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    pub path: PathBuf,
    /// Multiplies the whole update (`--lora FILE@SCALE`).
    pub scale: f64,
    /// How the user named it (`lightx2v/Qwen-Image-Lightning:…`, a path), for messages.
    pub label: String,
}

/// One module of a LoRA file: the keys of its factors.
#[derive(Debug, Clone, Default)]
struct RawModule {
    flat: bool,
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

/// Why a key is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    TextEncoder,
    Unsupported(&'static str),
    Unknown,
    /// The module names no Linear weight of the transformer.
    NoTarget,
    /// Only one of down/up (or an alpha without either).
    Incomplete,
    /// Shapes that do not fit the target weight (the message says how).
    Shape(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::TextEncoder => f.write_str("text-encoder adapter"),
            Rejection::Unsupported(what) => write!(f, "{what} is not supported"),
            Rejection::Unknown => f.write_str("not a LoRA key layout qwen-edit reads"),
            Rejection::NoTarget => f.write_str("matches no weight of the transformer"),
            Rejection::Incomplete => f.write_str("the module lacks its lora_down/lora_A or lora_up/lora_B half"),
            Rejection::Shape(why) => f.write_str(why),
        }
    }
}

/// A LoRA file, opened (memory-mapped) and its keys grouped by module.
pub struct LoraAdapter {
    pub file: LoraFile,
    st: candle_core::safetensors::MmapedSafetensors,
    modules: BTreeMap<String, RawModule>,
    rejected: Vec<(String, Rejection)>,
    /// `lora_alpha` / `r` / `use_rslora` from the diffusers metadata, if any.
    meta: Option<PeftMeta>,
    pub layout: &'static str,
    pub n_keys: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct PeftMeta {
    lora_alpha: f64,
    rslora: bool,
}

impl LoraAdapter {
    /// Opens `file.path` and classifies its keys.
    pub fn open(file: &LoraFile) -> anyhow::Result<Self> {
        let path = &file.path;
        let bad = |msg: String| -> anyhow::Error { UserError::bad_input(msg).into() };
        if !path.is_file() {
            return Err(bad(format!("LoRA file {} does not exist", path.display())));
        }
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            return Err(
                UserError::bad_input(format!("LoRA file {} is not a .safetensors file", path.display()))
                    .with_hint("qwen-edit reads LoRAs in safetensors format only (no pickled .bin/.pt/.ckpt)")
                    .into(),
            );
        }
        // SAFETY: mapped read-only; we rely on nobody truncating the file while it is in use.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
            .map_err(|e| bad(format!("cannot read LoRA file {}: {e}", path.display())))?;
        let meta = read_peft_meta(path).map_err(|e| bad(format!("LoRA file {}: {e}", path.display())))?;
        let mut names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        names.sort();
        let mut modules: BTreeMap<String, RawModule> = BTreeMap::new();
        let mut rejected = Vec::new();
        for key in &names {
            match keys::classify(key) {
                KeyKind::Lora { module, flat, part } => {
                    let m = modules.entry(module).or_default();
                    m.flat = flat;
                    let slot = match part {
                        Part::Down => &mut m.down,
                        Part::Up => &mut m.up,
                        Part::Alpha => &mut m.alpha,
                    };
                    if let Some(prev) = slot.replace(key.clone()) {
                        return Err(bad(format!(
                            "LoRA file {}: `{prev}` and `{key}` are the same factor of one module",
                            path.display()
                        )));
                    }
                }
                KeyKind::TextEncoder => rejected.push((key.clone(), Rejection::TextEncoder)),
                KeyKind::Unsupported(what) => rejected.push((key.clone(), Rejection::Unsupported(what))),
                KeyKind::Unknown => rejected.push((key.clone(), Rejection::Unknown)),
            }
        }
        if names.is_empty() {
            return Err(bad(format!("LoRA file {} holds no tensors", path.display())));
        }
        let layout = keys::layout_name(names.iter().map(String::as_str));
        Ok(Self {
            file: file.clone(),
            st,
            modules,
            rejected,
            meta,
            layout,
            n_keys: names.len(),
        })
    }
}

/// `lora_adapter_metadata` of diffusers-written files: a JSON string in the safetensors header, keys
/// prefixed `transformer.` when saved from the pipeline, bare when saved from the model.
fn read_peft_meta(path: &Path) -> anyhow::Result<Option<PeftMeta>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 {
        anyhow::bail!("the safetensors header claims {n} bytes");
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let header: serde_json::Value = serde_json::from_slice(&header)?;
    let Some(raw) = header
        .get("__metadata__")
        .and_then(|m| m.get("lora_adapter_metadata"))
        .and_then(|v| v.as_str())
    else {
        return Ok(None);
    };
    let meta: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw).map_err(|e| anyhow::anyhow!("lora_adapter_metadata is not a JSON object: {e}"))?;
    let get = |k: &str| meta.get(&format!("transformer.{k}")).or_else(|| meta.get(k));
    let Some(alpha) = get("lora_alpha").and_then(|v| v.as_f64()) else {
        return Ok(None);
    };
    // (`rank_pattern` only restates the factor shapes, which are read from the tensors.)
    if get("alpha_pattern")
        .and_then(|v| v.as_object())
        .is_some_and(|o| !o.is_empty())
    {
        anyhow::bail!("per-module LoRA alphas (lora_adapter_metadata alpha_pattern) are not supported");
    }
    if get("use_dora").and_then(|v| v.as_bool()) == Some(true) {
        anyhow::bail!("DoRA adapters (use_dora) are not supported");
    }
    Ok(Some(PeftMeta {
        lora_alpha: alpha,
        rslora: get("use_rslora").and_then(|v| v.as_bool()) == Some(true),
    }))
}

/// One update of one weight: `factor · up @ down` from adapter `adapter`.
#[derive(Debug, Clone)]
struct Update {
    adapter: usize,
    down: String,
    up: String,
    factor: f64,
}

/// What was merged from one file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterReport {
    pub label: String,
    pub path: PathBuf,
    pub scale: f64,
    pub layout: &'static str,
    /// Modules merged into the transformer.
    pub modules: usize,
    /// Keys not used (only with strict off): `key: reason`.
    pub skipped: Vec<String>,
}

/// The merge plan of a set of LoRAs against one transformer's weights.
pub struct LoraMerge {
    adapters: Vec<LoraAdapter>,
    /// weight name (`….weight`) → updates, in adapter order.
    updates: HashMap<String, Vec<Update>>,
    applied: Mutex<HashSet<String>>,
    pub reports: Vec<AdapterReport>,
}

impl LoraMerge {
    /// Matches every module of `files` against the weights in `base`; with `strict`, any key that
    /// adapts nothing is an error naming it (count and examples).
    pub fn new(files: &[LoraFile], base: &ComponentWeights, strict: bool) -> anyhow::Result<Self> {
        let adapters = files
            .iter()
            .map(LoraAdapter::open)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::plan(adapters, base, strict)
    }

    fn plan(adapters: Vec<LoraAdapter>, base: &ComponentWeights, strict: bool) -> anyhow::Result<Self> {
        // Linear weights of the model: dotted module → shape, and kohya's flattened name → dotted.
        let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
        for name in base.tensor_names() {
            if let (Some(module), Some(shape)) = (name.strip_suffix(".weight"), base.shape(&name)) {
                if shape.len() == 2 {
                    shapes.insert(module.to_string(), shape);
                }
            }
        }
        let flat: HashMap<String, String> = shapes.keys().map(|m| (m.replace('.', "_"), m.clone())).collect();
        let mut updates: HashMap<String, Vec<Update>> = HashMap::new();
        let mut reports = Vec::new();
        for (ai, a) in adapters.iter().enumerate() {
            let mut rejected = a.rejected.clone();
            let mut merged = 0usize;
            for (module, m) in &a.modules {
                let all_keys = || [&m.down, &m.up, &m.alpha].into_iter().flatten().cloned();
                let reject = |rejected: &mut Vec<(String, Rejection)>, why: Rejection| {
                    rejected.extend(all_keys().map(|k| (k, why.clone())));
                };
                let target = if m.flat {
                    flat.get(module).cloned()
                } else {
                    Some(module.clone())
                };
                let Some(target) = target.filter(|t| shapes.contains_key(t)) else {
                    reject(&mut rejected, Rejection::NoTarget);
                    continue;
                };
                let (Some(down), Some(up)) = (&m.down, &m.up) else {
                    reject(&mut rejected, Rejection::Incomplete);
                    continue;
                };
                let w = &shapes[&target];
                let dshape = a.st.get(down)?.shape().to_vec();
                let ushape = a.st.get(up)?.shape().to_vec();
                let fits = dshape.len() == 2
                    && ushape.len() == 2
                    && dshape[0] == ushape[1]
                    && ushape[0] == w[0]
                    && dshape[1] == w[1]
                    && dshape[0] > 0;
                if !fits {
                    reject(
                        &mut rejected,
                        Rejection::Shape(format!(
                            "down {dshape:?} / up {ushape:?} do not fit {target}.weight {w:?} (want [r, {}] / [{}, r])",
                            w[1], w[0]
                        )),
                    );
                    continue;
                }
                let rank = dshape[0] as f64;
                let ratio = match (&m.alpha, a.meta) {
                    (Some(alpha_key), _) => {
                        let t = a.st.load(alpha_key, &Device::Cpu)?;
                        if t.elem_count() != 1 {
                            reject(
                                &mut rejected,
                                Rejection::Shape(format!("alpha has shape {:?}, not a scalar", t.dims())),
                            );
                            continue;
                        }
                        let alpha = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0];
                        alpha / rank
                    }
                    (None, Some(meta)) if meta.rslora => meta.lora_alpha / rank.sqrt(),
                    (None, Some(meta)) => meta.lora_alpha / rank,
                    (None, None) => 1.0,
                };
                merged += 1;
                let factor = a.file.scale * ratio;
                if factor != 0.0 {
                    updates.entry(format!("{target}.weight")).or_default().push(Update {
                        adapter: ai,
                        down: down.clone(),
                        up: up.clone(),
                        factor,
                    });
                }
            }
            if merged == 0 && rejected.is_empty() {
                return Err(UserError::bad_input(format!(
                    "LoRA `{}` ({}) holds no LoRA weights",
                    a.file.label,
                    a.file.path.display()
                ))
                .into());
            }
            if strict && !rejected.is_empty() {
                return Err(rejection_error(a, merged, &rejected));
            }
            if merged == 0 {
                return Err(rejection_error(a, merged, &rejected));
            }
            reports.push(AdapterReport {
                label: a.file.label.clone(),
                path: a.file.path.clone(),
                scale: a.file.scale,
                layout: a.layout,
                modules: merged,
                skipped: rejected.iter().map(|(k, why)| format!("{k}: {why}")).collect(),
            });
        }
        Ok(Self {
            adapters,
            updates,
            applied: Mutex::new(HashSet::new()),
            reports,
        })
    }

    /// Whether `name` gets an update.
    pub fn adapts(&self, name: &str) -> bool {
        self.updates.contains_key(name)
    }

    /// `w` (f32, on its device) plus every update of `name`, in f32.
    pub fn apply(&self, name: &str, w: Tensor) -> candle_core::Result<Tensor> {
        let Some(updates) = self.updates.get(name) else {
            return Ok(w);
        };
        let dev = w.device().clone();
        let mut w = w.to_dtype(DType::F32)?;
        for u in updates {
            let st = &self.adapters[u.adapter].st;
            let down = st.load(&u.down, &dev)?.to_dtype(DType::F32)?; // [r, in]
            let up = st.load(&u.up, &dev)?.to_dtype(DType::F32)?; // [out, r]
            w = (w + (up.matmul(&down)? * u.factor)?)?;
        }
        if let Ok(mut applied) = self.applied.lock() {
            applied.insert(name.to_string());
        }
        Ok(w)
    }

    /// Weights with updates that the model never loaded (must be empty after building the model).
    pub fn unapplied(&self) -> Vec<String> {
        let applied = self.applied.lock().map(|a| a.clone()).unwrap_or_default();
        let mut v: Vec<String> = self.updates.keys().filter(|k| !applied.contains(*k)).cloned().collect();
        v.sort();
        v
    }
}

fn rejection_error(a: &LoraAdapter, merged: usize, rejected: &[(String, Rejection)]) -> anyhow::Error {
    let n_te = rejected.iter().filter(|(_, w)| *w == Rejection::TextEncoder).count();
    let examples: Vec<String> = rejected
        .iter()
        .filter(|(_, w)| *w != Rejection::TextEncoder)
        .take(MAX_EXAMPLES)
        .map(|(k, why)| format!("`{k}` ({why})"))
        .collect();
    let mut parts = Vec::new();
    if !examples.is_empty() {
        let n_other = rejected.len() - n_te;
        parts.push(format!(
            "{n_other} key{} adapt nothing in this transformer, e.g. {}",
            if n_other == 1 { "" } else { "s" },
            examples.join(", ")
        ));
    }
    if n_te > 0 {
        let first = rejected
            .iter()
            .find(|(_, w)| *w == Rejection::TextEncoder)
            .map(|(k, _)| k.as_str())
            .unwrap_or("");
        parts.push(format!(
            "{n_te} key{} are for the text encoder (e.g. `{first}`), which qwen-edit never adapts (LoRAs apply to the transformer only)",
            if n_te == 1 { "" } else { "s" }
        ));
    }
    let msg = format!(
        "LoRA `{}` ({}, {} layout, {} keys): {}",
        a.file.label,
        a.file.path.display(),
        a.layout,
        a.n_keys,
        parts.join("; ")
    );
    let hint = if merged > 0 {
        format!(
            "is it a LoRA for Qwen-Image(-Edit)? {merged} module(s) did match; pass --no-lora-strict (job: \"lora_strict\": false) to merge those and skip the rest"
        )
    } else {
        "nothing in it matches: is it a LoRA for Qwen-Image(-Edit)?".to_string()
    };
    UserError::bad_input(msg).with_hint(hint).into()
}

/// A `VarBuilder` backend: the component's weights with the LoRA updates merged in.
pub struct LoraBackend {
    base: ComponentWeights,
    merge: Arc<LoraMerge>,
}

impl LoraBackend {
    pub fn new(base: ComponentWeights, merge: Arc<LoraMerge>) -> Self {
        Self { base, merge }
    }
}

impl SimpleBackend for LoraBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if !self.merge.adapts(name) {
            return self.base.get(s, name, init, dtype, dev);
        }
        let w = self.base.get(s, name, init, DType::F32, dev)?;
        self.merge.apply(name, w)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !self.merge.adapts(name) {
            return self.base.get_unchecked(name, dtype, dev);
        }
        let w = self.base.get_unchecked(name, DType::F32, dev)?;
        self.merge.apply(name, w)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.base.contains_tensor(name)
    }
}
