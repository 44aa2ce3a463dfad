//! `--device` and `--dtype`: which candle device and compute dtype to use.

use candle_core::{DType, Device};

use crate::cli::DTypeArg;
use crate::error::UserError;

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    if let Ok(n) = n.parse::<usize>() {
                        return Ok(Self::Cuda(n));
                    }
                }
                Err(UserError::bad_input(format!("unknown device `{s}`"))
                    .with_hint("use `cuda`, `cuda:N` (N = GPU index) or `cpu`")
                    .into())
            }
        }
    }

    /// Opens the device. Without the `cuda` feature, or when CUDA fails, this is a device error
    /// (exit 5) that says what to do.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => open_cuda(n),
        }
    }

    /// The dtype to compute in: `--dtype`, else bf16 on CUDA and f32 on the CPU.
    pub fn dtype(self, arg: Option<DTypeArg>) -> DType {
        match (arg, self) {
            (Some(DTypeArg::Bf16), _) => DType::BF16,
            (Some(DTypeArg::F32), _) => DType::F32,
            (None, Self::Cuda(_)) => DType::BF16,
            (None, Self::Cpu) => DType::F32,
        }
    }
}

/// Turns a CUDA failure (out of memory above all) that reached the edge of the pipeline into a device
/// error (exit 5) that names the device and its free memory and says what to try. Other errors pass.
pub fn classify_error(err: anyhow::Error, device: &Device) -> anyhow::Error {
    let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() else {
        return err;
    };
    if crate::error::user_error(&err).is_some() {
        return err;
    }
    let text = format!("{err:#}");
    let oom = text.contains("OUT_OF_MEMORY") || text.to_ascii_lowercase().contains("out of memory");
    if !oom && !text.contains("CUDA_ERROR") && !text.contains("cuBLAS") && !text.contains("CUBLAS") {
        return err;
    }
    let memory = crate::cuda_probe::probe()
        .ok()
        .and_then(|p| p.devices.into_iter().nth(gpu_id))
        .map(|d| {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            match d.free {
                Some(free) => format!("{:.1} GiB free of {:.1} GiB", gib(free), gib(d.total)),
                None => format!("{:.1} GiB in all", gib(d.total)),
            }
        })
        .unwrap_or_else(|| "free memory unknown".into());
    let e = if oom {
        UserError::device(format!("out of GPU memory on cuda:{gpu_id} ({memory}): {text}")).with_hint(
            "use a smaller output (--width/--height), smaller references (--ref-size) or fewer of them, \
             --vae-tiling, or free the GPU (see `nvidia-smi`)",
        )
    } else {
        UserError::device(format!("CUDA failed on cuda:{gpu_id} ({memory}): {text}"))
            .with_hint("run `qwen-edit doctor`; if the GPU is in a bad state, restart the process")
    };
    e.into()
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> anyhow::Result<Device> {
    Device::new_cuda(n).map_err(|e| {
        UserError::device(format!("cannot open CUDA device {n}: {e}"))
            .with_hint(
                "run `qwen-edit doctor` to check the driver and the GPUs, or pick another with `--device cuda:N`",
            )
            .into()
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> anyhow::Result<Device> {
    Err(UserError::device(format!("this build of qwen-edit has no CUDA support (asked for cuda:{n})"))
        .with_hint("rebuild with `cargo install --path . --features cuda`, or pass `--device cpu` (only practical for tiny test models)")
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("CUDA").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        let err = DeviceSpec::parse("tpu").unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 3);
        assert_eq!(DeviceSpec::Cpu.dtype(None), DType::F32);
        assert_eq!(DeviceSpec::Cuda(0).dtype(None), DType::BF16);
    }
}
