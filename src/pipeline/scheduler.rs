//! `FlowMatchEulerDiscreteScheduler` as the Qwen-Image-Edit pipelines use it (diffusers 0.42.1,
//! `schedulers/scheduling_flow_match_euler_discrete.py`, called from `pipeline_qwenimage_edit*.py`).
//!
//! The pipelines pass explicit sigmas: `np.linspace(1.0, 1/N, N)` in float64, which `set_timesteps`
//! narrows to float32; every later step of the schedule is float32 arithmetic (numpy promotes the Python
//! floats `exp(mu)`, `shift`, `1 - shift_terminal` to float32 before operating on the float32 array):
//!
//! ```text
//! σ   = f32(linspace_f64(1, 1/N, N))
//! σ'  = e / (e + (1/σ − 1))             e = f32(exp(mu))      time_shift_type "exponential"
//! σ'  = m / (m + (1/σ − 1))             m = f32(mu)           time_shift_type "linear"
//! σ'  = s·σ / (1 + (s − 1)·σ)           s = shift             without dynamic shifting
//! if shift_terminal: z = 1 − σ';  k = z[N−1] / f32(1 − shift_terminal);  σ' = 1 − z / k
//! timesteps = σ' · num_train_timesteps (f32);  sigmas = σ' ++ [0]
//! ```
//!
//! [`FlowMatchEulerScheduler::step`] is the Euler update in the reference's dtype order (see there).

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Tensor};
use serde::Deserialize;

use crate::error::UserError;

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_one() -> f64 {
    1.0
}
fn default_base_shift() -> Option<f64> {
    Some(0.5)
}
fn default_max_shift() -> Option<f64> {
    Some(1.15)
}
fn default_base_image_seq_len() -> usize {
    256
}
fn default_max_image_seq_len() -> usize {
    4096
}

/// How sigmas are shifted by `mu` when `use_dynamic_shifting` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShiftType {
    Exponential,
    Linear,
}

/// `scheduler/scheduler_config.json`; field names are the file's keys, defaults are diffusers'.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "default_base_shift")]
    pub base_shift: Option<f64>,
    #[serde(default = "default_max_shift")]
    pub max_shift: Option<f64>,
    #[serde(default = "default_base_image_seq_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "default_max_image_seq_len")]
    pub max_image_seq_len: usize,
    #[serde(default)]
    pub invert_sigmas: bool,
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default = "default_time_shift_type")]
    pub time_shift_type: TimeShiftType,
    #[serde(default)]
    pub stochastic_sampling: bool,
}

fn default_time_shift_type() -> TimeShiftType {
    TimeShiftType::Exponential
}

impl SchedulerConfig {
    /// The Qwen-Image(-Edit) hub config (`scheduler/scheduler_config.json` of the Qwen repos).
    pub fn qwen_image() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: true,
            base_shift: Some(0.5),
            max_shift: Some(0.9),
            base_image_seq_len: 256,
            max_image_seq_len: 8192,
            invert_sigmas: false,
            shift_terminal: Some(0.02),
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShiftType::Exponential,
            stochastic_sampling: false,
        }
    }

    /// The config the Qwen-Image Lightning LoRAs are run with: `base_shift = max_shift = ln 3` (so
    /// `mu = ln 3` at every resolution, a static shift of 3) and no terminal stretch.
    pub fn lightning() -> Self {
        let ln3 = 3f64.ln();
        Self {
            base_shift: Some(ln3),
            max_shift: Some(ln3),
            shift_terminal: None,
            ..Self::qwen_image()
        }
    }

    /// Parses a `scheduler_config.json` text and checks it only asks for what we implement.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let cfg: Self = serde_json::from_str(text).context("cannot parse the scheduler config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `<dir>/scheduler_config.json` (`dir` is the model's `scheduler/` folder).
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("scheduler_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            UserError::model_missing(format!("cannot read {}: {e}", path.display()))
                .with_hint("the model folder needs scheduler/scheduler_config.json")
        })?;
        Self::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Rejects settings this implementation does not reproduce, and inconsistent ones.
    pub fn validate(&self) -> anyhow::Result<()> {
        let bad = |msg: String| -> anyhow::Result<()> {
            Err(UserError::model_missing(format!("scheduler config: {msg}"))
                .with_hint(
                    "qwen-edit implements the Qwen-Image flow-match Euler schedule (FlowMatchEulerDiscreteScheduler)",
                )
                .into())
        };
        let unsupported = [
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("stochastic_sampling", self.stochastic_sampling),
            ("invert_sigmas", self.invert_sigmas),
        ];
        if let Some((key, _)) = unsupported.iter().find(|(_, on)| *on) {
            return bad(format!("{key}=true is not supported"));
        }
        if self.num_train_timesteps == 0 {
            return bad("num_train_timesteps must be positive".into());
        }
        if self.use_dynamic_shifting && (self.base_shift.is_none() || self.max_shift.is_none()) {
            return bad("use_dynamic_shifting needs base_shift and max_shift".into());
        }
        if self.use_dynamic_shifting && self.max_image_seq_len == self.base_image_seq_len {
            return bad("max_image_seq_len must differ from base_image_seq_len".into());
        }
        if self.shift_terminal == Some(1.0) {
            return bad("shift_terminal must not be 1".into());
        }
        Ok(())
    }

    /// `mu` for a latent of `image_seq_len` noise tokens from this config's shift parameters, as the
    /// pipelines compute it (`None` when the config has no base/max shift).
    pub fn mu(&self, image_seq_len: usize) -> Option<f64> {
        Some(calculate_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            self.base_shift?,
            self.max_shift?,
        ))
    }
}

/// The pipelines' `calculate_shift`: linear in the sequence length between `(base_seq, base_shift)`
/// and `(max_seq, max_shift)`, in float64.
pub fn calculate_shift(image_seq_len: usize, base_seq: usize, max_seq: usize, base_shift: f64, max_shift: f64) -> f64 {
    // Python: the sequence-length difference is an integer, divided as a float.
    let m = (max_shift - base_shift) / (max_seq as f64 - base_seq as f64);
    let b = base_shift - m * base_seq as f64;
    image_seq_len as f64 * m + b
}

/// `np.linspace(start, stop, num)` in float64, with numpy's operation order (`i·step + start`, last
/// element set to `stop`).
pub fn linspace_f64(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut out: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = out.last_mut() {
        *last = stop;
    }
    out
}

/// The flow-match Euler scheduler: a schedule of sigmas/timesteps and the Euler step between them.
#[derive(Debug, Clone)]
pub struct FlowMatchEulerScheduler {
    cfg: SchedulerConfig,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
}

impl FlowMatchEulerScheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        Self {
            cfg,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        }
    }

    /// A scheduler with the Lightning config ([`SchedulerConfig::lightning`]).
    pub fn lightning() -> Self {
        Self::new(SchedulerConfig::lightning())
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The pipelines' schedule for `num_steps` steps: sigmas `linspace(1, 1/N, N)` shifted by `mu`
    /// (required when the config uses dynamic shifting, ignored otherwise).
    pub fn set_timesteps(&mut self, num_steps: usize, mu: Option<f64>) -> anyhow::Result<()> {
        if num_steps == 0 {
            anyhow::bail!("the number of inference steps must be at least 1");
        }
        let sigmas: Vec<f32> = linspace_f64(1.0, 1.0 / num_steps as f64, num_steps)
            .into_iter()
            .map(|s| s as f32)
            .collect();
        self.set_sigmas(&sigmas, mu)
    }

    /// `set_timesteps(sigmas=..., mu=...)` with caller-given float32 sigmas.
    pub fn set_sigmas(&mut self, sigmas: &[f32], mu: Option<f64>) -> anyhow::Result<()> {
        if sigmas.is_empty() {
            anyhow::bail!("the sigma schedule must not be empty");
        }
        let mut s: Vec<f32> = if self.cfg.use_dynamic_shifting {
            let mu = mu.context("the scheduler uses dynamic shifting, so mu is required")?;
            // sigma exponent is 1.0 in the pipelines: x ** 1.0 == x.
            let shift = match self.cfg.time_shift_type {
                TimeShiftType::Exponential => mu.exp() as f32,
                TimeShiftType::Linear => mu as f32,
            };
            sigmas.iter().map(|&t| shift / (shift + (1.0 / t - 1.0))).collect()
        } else {
            let shift = self.cfg.shift as f32;
            let shift_minus_one = (self.cfg.shift - 1.0) as f32;
            sigmas
                .iter()
                .map(|&t| shift * t / (1.0 + shift_minus_one * t))
                .collect()
        };
        // Python tests `if shift_terminal:`, so 0.0 also means off.
        if let Some(terminal) = self.cfg.shift_terminal.filter(|&t| t != 0.0) {
            let one_minus_last = 1.0 - s[s.len() - 1];
            let scale = one_minus_last / (1.0 - terminal) as f32;
            for v in s.iter_mut() {
                *v = 1.0 - (1.0 - *v) / scale;
            }
        }
        if let Some(bad) = s.iter().position(|v| !v.is_finite()) {
            anyhow::bail!(
                "the sigma schedule is undefined at step {bad} of {} (shift_terminal needs at least 2 steps)",
                s.len()
            );
        }
        let train = self.cfg.num_train_timesteps as f32;
        self.timesteps = s.iter().map(|&v| v * train).collect();
        s.push(0.0);
        self.sigmas = s;
        Ok(())
    }

    /// Timesteps (`σ·num_train_timesteps`), one per step; the transformer gets `t / 1000`.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// Sigmas, one per step plus the final 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Number of denoising steps of the current schedule.
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// Euler step `step_index`: `prev = sample + (σ[i+1] − σ[i])·model_output`, in the reference's
    /// dtype order. diffusers computes `dt * model_output` with `dt` a 0-dim f32 tensor, so torch casts
    /// `dt` to `model_output`'s dtype (bf16/f16), multiplies in f32 and rounds the product to that dtype
    /// (seen on both the CPU and CUDA); the sum is taken in f32 with the sample upcast, then cast to
    /// `model_output`'s dtype. In f32 this is plainly `sample + dt·model_output`.
    pub fn step(&self, model_output: &Tensor, step_index: usize, sample: &Tensor) -> candle_core::Result<Tensor> {
        if step_index + 1 >= self.sigmas.len() {
            candle_core::bail!(
                "scheduler step {step_index} out of range: the schedule has {} steps (call set_timesteps first)",
                self.num_steps()
            );
        }
        if model_output.dims() != sample.dims() {
            candle_core::bail!(
                "scheduler step: model output shape {:?} differs from sample shape {:?}",
                model_output.dims(),
                sample.dims()
            );
        }
        let out_dtype = model_output.dtype();
        let device = model_output.device();
        let dt = Tensor::new(self.sigmas[step_index + 1] - self.sigmas[step_index], device)?;
        let dt = dt.to_dtype(out_dtype)?.to_dtype(DType::F32)?;
        // [B, N, C] * [] -> [B, N, C], rounded to the model output's dtype.
        let update = model_output.to_dtype(DType::F32)?.broadcast_mul(&dt)?;
        let update = update.to_dtype(out_dtype)?.to_dtype(DType::F32)?;
        (sample.to_dtype(DType::F32)? + update)?.to_dtype(out_dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lightning_schedule_is_static_shift_three() {
        let mut s = FlowMatchEulerScheduler::lightning();
        let cfg = s.config().clone();
        let mu = cfg.mu(4096);
        assert!((mu.unwrap_or(0.0) - 3f64.ln()).abs() < 1e-12);
        s.set_timesteps(4, mu).unwrap();
        let want = [1.0f32, 0.9, 0.75, 0.5, 0.0];
        for (g, w) in s.sigmas().iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{:?}", s.sigmas());
        }
    }

    #[test]
    fn qwen_schedule_ends_at_shift_terminal() {
        let mut s = FlowMatchEulerScheduler::new(SchedulerConfig::qwen_image());
        s.set_timesteps(50, Some(0.695968)).unwrap();
        assert_eq!(s.sigmas().len(), 51);
        assert_eq!(s.timesteps().len(), 50);
        assert_eq!(s.sigmas()[0], 1.0);
        assert!((s.sigmas()[49] - 0.02).abs() < 1e-6);
        assert_eq!(s.sigmas()[50], 0.0);
    }

    #[test]
    fn rejects_unsupported_settings() {
        let err = SchedulerConfig::from_json(r#"{"use_karras_sigmas": true}"#).unwrap_err();
        assert!(format!("{err:#}").contains("use_karras_sigmas"));
        assert!(SchedulerConfig::from_json(r#"{"stochastic_sampling": true}"#).is_err());
        assert!(SchedulerConfig::from_json(r#"{"time_shift_type": "cubic"}"#).is_err());
        let ok = SchedulerConfig::from_json(r#"{"shift_terminal": null, "_class_name": "X"}"#).unwrap();
        assert_eq!(ok.shift_terminal, None);
        assert_eq!(ok.max_shift, Some(1.15));
    }

    #[test]
    fn step_rounds_like_torch() -> candle_core::Result<()> {
        use candle_core::Device;
        let mut s = FlowMatchEulerScheduler::lightning();
        s.set_sigmas(&[1.0, 0.9537812, 0.123_456_79], Some(3f64.ln()))
            .map_err(candle_core::Error::wrap)?;
        let mo = Tensor::new(&[[1.5f32, -2.25, 3.0e-3]], &Device::Cpu)?;
        let sample = Tensor::new(&[[0.5f32, 0.25, -1.0]], &Device::Cpu)?;
        // f32: plain Euler.
        let dt = s.sigmas()[2] - s.sigmas()[1];
        let got = s.step(&mo, 1, &sample)?.to_vec2::<f32>()?;
        let want: Vec<f32> = [0.5f32, 0.25, -1.0]
            .iter()
            .zip([1.5f32, -2.25, 3.0e-3])
            .map(|(x, m)| x + dt * m)
            .collect();
        assert_eq!(got[0], want);
        // bf16 on the CPU: dt and the product are rounded to bf16 before the f32 sum.
        let (mo16, sample16) = (mo.to_dtype(DType::BF16)?, sample.to_dtype(DType::BF16)?);
        let got = s.step(&mo16, 1, &sample16)?;
        assert_eq!(got.dtype(), DType::BF16);
        let dt16 = half::bf16::from_f32(dt).to_f32();
        let want: Vec<f32> = sample16.to_dtype(DType::F32)?.to_vec2::<f32>()?[0]
            .iter()
            .zip(&mo16.to_dtype(DType::F32)?.to_vec2::<f32>()?[0])
            .map(|(x, m)| half::bf16::from_f32(x + half::bf16::from_f32(dt16 * m).to_f32()).to_f32())
            .collect();
        assert_eq!(got.to_dtype(DType::F32)?.to_vec2::<f32>()?[0], want);
        assert!(s.step(&mo, 2, &sample).is_ok());
        assert!(s.step(&mo, 3, &sample).is_err());
        Ok(())
    }

    #[test]
    fn mu_requires_dynamic_shifting_inputs() {
        let mut s = FlowMatchEulerScheduler::new(SchedulerConfig::qwen_image());
        assert!(s.set_timesteps(10, None).is_err());
        assert!(s.set_timesteps(0, Some(0.5)).is_err());
    }
}
