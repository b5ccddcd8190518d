//! Choosing the compute device by name, with a clear error when the build lacks it.

use crate::{ModelError, Result};
use candle_core::Device;
use std::str::FromStr;

/// `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceChoice {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        let (kind, ordinal) = match s.split_once(':') {
            Some((k, o)) => (
                k,
                o.parse::<usize>()
                    .map_err(|_| ModelError::Device(format!("bad device ordinal in {s:?}")))?,
            ),
            None => (s, 0),
        };
        match kind {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(ordinal)),
            "metal" => Ok(DeviceChoice::Metal(ordinal)),
            _ => Err(ModelError::Device(format!(
                "unknown device {s:?}: use cpu, cuda, cuda:N, metal or metal:N"
            ))),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceChoice::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device; fails with instructions when this build was made without it.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(ModelError::Device(
                        "this build has no CUDA support: rebuild with `--features cuda`".into(),
                    ));
                }
                Ok(Device::new_cuda(i)?)
            }
            DeviceChoice::Metal(i) => {
                if !candle_core::utils::metal_is_available() {
                    return Err(ModelError::Device(
                        "this build has no Metal support: rebuild with `--features metal`".into(),
                    ));
                }
                Ok(Device::new_metal(i)?)
            }
        }
    }
}

/// Keeps freed tensor memory in the process. glibc returns every large block (over 128 KiB
/// by default) to the kernel on free, so each training step pays to page-fault and zero its
/// activations anew; with these settings a step reuses the previous step's pages.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Sets the compute thread count once, at start-up: unset, candle re-reads /proc/cpuinfo on
/// every operation. `None` keeps an existing `RAYON_NUM_THREADS`, else uses all cores.
pub fn configure_threads(threads: Option<usize>) -> usize {
    let existing = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0);
    let n = threads
        .or(existing)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Safety of set_var: called before any compute thread exists (start of main or of a test
    // binary's first model), and the value only ever changes to the same number.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reports_missing_backends() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!(DeviceChoice::Cpu.open().is_ok());
        if !candle_core::utils::cuda_is_available() {
            let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
