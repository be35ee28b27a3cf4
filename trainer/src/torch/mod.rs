//! The MobileNetV2 classifier on libtorch: the network, its weights files (torch's legacy `.pth`
//! and safetensors) and device selection. Only the trainer links libtorch; serving runs the ONNX
//! export of the same weights (see [`model::onnx`]).

pub mod adam;
pub mod net;
pub mod pickle;
pub mod pretrained;
pub mod thread;
mod weights;

use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use model::CLASSES;

pub use net::MobileNetV2;
pub use pretrained::{WeightsError, read_state_dict};
pub use weights::{from_safetensors, to_safetensors};

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`. `auto` picks CUDA when libtorch can see a GPU.
pub fn parse_device(s: &str) -> Result<Device, String> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err("--device cuda was requested but libtorch sees no CUDA device (is this a CPU build of libtorch?)".into())
            }
        }
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if tch::Cuda::is_available() && (n as i64) < tch::Cuda::device_count() => {
                Ok(Device::Cuda(n))
            }
            Some(n) => Err(format!("CUDA device {n} is not available")),
            None => Err(format!(
                "unknown device {other:?}; use auto, cpu, cuda or cuda:N"
            )),
        },
    }
}

/// What the network computes in while training (`--precision`). Master weights, batch-norm
/// statistics, the loss and evaluation stay fp32 whatever is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// bf16 where the device computes it natively (GPUs from Ampere on; CPUs with AVX512-BF16
    /// or AMX), fp16 on older GPUs, else fp32.
    Auto,
    Fp32,
    Bf16,
    /// fp16 with dynamic loss scaling; CUDA only.
    Fp16,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "fp32" => Ok(Self::Fp32),
            "bf16" => Ok(Self::Bf16),
            "fp16" => Ok(Self::Fp16),
            other => Err(format!(
                "unknown precision {other:?}; use auto, fp32, bf16 or fp16"
            )),
        }
    }
}

impl Precision {
    /// The tensor kind convolutions compute in on `device`.
    pub fn resolve(self, device: Device) -> Result<Kind, String> {
        match (self, device) {
            (Self::Fp32, _) => Ok(Kind::Float),
            (Self::Bf16, _) => Ok(Kind::BFloat16),
            (Self::Fp16, Device::Cuda(_)) => Ok(Kind::Half),
            (Self::Fp16, _) => Err(
                "--precision fp16 needs a CUDA device (CPUs compute fp16 slowly; use bf16 or fp32)"
                    .into(),
            ),
            (Self::Auto, Device::Cuda(n)) => Ok(match cuda_compute_capability(n) {
                // Tensor cores compute bf16 from Ampere (8.0) on; older GPUs emulate it.
                Some((major, _)) if major < 8 => Kind::Half,
                _ => Kind::BFloat16,
            }),
            (Self::Auto, _) if cpu_has_native_bf16() => Ok(Kind::BFloat16),
            (Self::Auto, _) => Ok(Kind::Float),
        }
    }
}

/// The GPU's compute capability as `nvidia-smi` reports it (the NVIDIA container toolkit
/// mounts it into GPU pods); `None` when it cannot be asked.
fn cuda_compute_capability(index: usize) -> Option<(u32, u32)> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader", "-i"])
        .arg(index.to_string())
        .output()
        .ok()?;
    parse_compute_capability(&String::from_utf8_lossy(&out.stdout))
}

fn parse_compute_capability(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether oneDNN runs bf16 convolutions in hardware here (AVX512-BF16 or AMX); without
/// either, bf16 is emulated and slower than fp32.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // AMX detection is not stable in `is_x86_feature_detected!` yet; the kernel's flags say.
        std::arch::is_x86_feature_detected!("avx512bf16")
            || std::fs::read_to_string("/proc/cpuinfo")
                .is_ok_and(|info| info.split_whitespace().any(|flag| flag == "amx_bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `fp32`, `bf16` or `fp16`, as metrics.json records it.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bf16",
        Kind::Half => "fp16",
        _ => "fp32",
    }
}

/// Human-readable device name for logs and metrics.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A MobileNetV2 classifier together with its parameters.
#[derive(Debug)]
pub struct Classifier {
    vs: VarStore,
    net: MobileNetV2,
}

impl Classifier {
    /// A freshly initialised network for [`CLASSES`].
    pub fn new(device: Device, dropout: f64) -> Self {
        Self::with_classes(device, CLASSES.len() as i64, dropout)
    }

    /// Any number of outputs; 1000 reproduces torchvision's ImageNet model.
    pub fn with_classes(device: Device, num_classes: i64, dropout: f64) -> Self {
        let vs = VarStore::new(device);
        let net = MobileNetV2::new(&vs.root(), num_classes, dropout);
        Self { vs, net }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    pub fn net(&self) -> &MobileNetV2 {
        &self.net
    }

    /// Copies every backbone tensor (`features.*`) from a `.pth` or `.safetensors` file and
    /// leaves the head as initialised. Fails unless the file covers the whole backbone with
    /// matching shapes. Returns the number of tensors loaded.
    pub fn load_backbone(&mut self, bytes: &[u8]) -> Result<usize, WeightsError> {
        let tensors = read_state_dict(bytes)?;
        self.copy_in(tensors, |name| name.starts_with("features."))
    }

    /// Loads a complete set of weights (as written by [`Classifier::to_safetensors`]).
    pub fn load_weights(&mut self, bytes: &[u8]) -> Result<(), WeightsError> {
        let tensors = read_state_dict(bytes)?;
        self.copy_in(tensors, |_| true).map(|_| ())
    }

    fn copy_in(
        &mut self,
        tensors: Vec<(String, Tensor)>,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<usize, WeightsError> {
        let mut vars = self.vs.variables();
        vars.retain(|name, _| wanted(name));
        let mut loaded = 0;
        tch::no_grad(|| -> Result<(), WeightsError> {
            for (name, src) in tensors {
                let Some(dst) = vars.remove(&name) else {
                    continue;
                };
                if dst.size() != src.size() {
                    return Err(WeightsError::Mismatch(format!(
                        "{name} has shape {:?} in the file but {:?} in the model",
                        src.size(),
                        dst.size()
                    )));
                }
                let mut dst = dst;
                dst.f_copy_(&src.f_to_kind(dst.kind())?)?;
                loaded += 1;
            }
            Ok(())
        })?;
        if !vars.is_empty() {
            let mut missing: Vec<_> = vars.into_keys().collect();
            missing.sort();
            return Err(WeightsError::Mismatch(format!(
                "{} model tensors are missing from the file, e.g. {}",
                missing.len(),
                missing[..missing.len().min(3)].join(", ")
            )));
        }
        Ok(loaded)
    }

    /// All parameters and batch-norm statistics as safetensors bytes.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, WeightsError> {
        let mut named: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        to_safetensors(&named)
    }

    /// Convolutions compute in `kind` while training (see [`Precision`]).
    pub fn set_train_kind(&mut self, kind: Kind) {
        self.net.set_train_kind(kind);
    }

    pub fn train_kind(&self) -> Kind {
        self.net.train_kind()
    }

    /// Logits for a normalised NCHW batch.
    pub fn logits(&self, batch: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(batch, train)
    }

    /// Class probabilities (rows sum to 1) for a normalised NCHW batch, in eval mode.
    pub fn predict(&self, batch: &Tensor) -> Tensor {
        tch::no_grad(|| self.logits(batch, false).softmax(-1, Kind::Float))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_resolves_per_device() {
        assert_eq!(Precision::Fp32.resolve(Device::Cpu), Ok(Kind::Float));
        assert_eq!(Precision::Bf16.resolve(Device::Cpu), Ok(Kind::BFloat16));
        assert!(Precision::Fp16.resolve(Device::Cpu).is_err());
        assert_eq!(Precision::Fp16.resolve(Device::Cuda(0)), Ok(Kind::Half));
        let auto_cpu = Precision::Auto.resolve(Device::Cpu);
        let expected = if cpu_has_native_bf16() {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        assert_eq!(auto_cpu, Ok(expected));
        assert_eq!("bf16".parse(), Ok(Precision::Bf16));
        assert!("fp8".parse::<Precision>().is_err());
        assert_eq!(parse_compute_capability("9.0\n"), Some((9, 0)));
        assert_eq!(parse_compute_capability("7.5"), Some((7, 5)));
        assert_eq!(parse_compute_capability("N/A"), None);
    }
}
