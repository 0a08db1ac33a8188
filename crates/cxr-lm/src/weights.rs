//! Named weights for building a model: read from safetensors (single file or sharded with its
//! index), PyTorch `pytorch_model*.bin` (candle's pickle reader) or GGUF, all under their Hugging Face
//! names. A model asks for each tensor by name and shape, as with candle's `VarBuilder`; the store
//! checks the shape, keeps quantized weights quantized for inference, dequantizes them for
//! training, and records every trainable tensor as a `Var` under its HF name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QTensor};

pub use crate::linear::Linear;
use candle_core::{DType, Device, Tensor, Var};

use crate::LmError;

/// One stored tensor.
#[derive(Clone, Debug)]
pub enum Weight {
    Float(Tensor),
    Quantized(Arc<QTensor>),
}

impl Weight {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Float(t) => t.dims().to_vec(),
            Weight::Quantized(q) => q.shape().dims().to_vec(),
        }
    }

    fn to_f32(&self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Weight::Float(t) => t.to_dtype(DType::F32),
            Weight::Quantized(q) => q.dequantize(device),
        }
    }
}

/// How the store hands weights to a model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightMode {
    /// Inference: quantized stays quantized, float stays float.
    Inference,
    /// Inference with every linear layer quantized to this type on load (`q8_0`, `q4_0`, ...).
    Quantize(GgmlDType),
    /// Training: everything dequantized to f32 and wrapped in a `Var`.
    Train,
}

struct Store {
    tensors: Mutex<HashMap<String, Weight>>,
    origin: String,
    mode: WeightMode,
    device: Device,
    vars: Mutex<Vec<(String, Var)>>,
    lora: Option<LoraConfig>,
}

/// Low-rank adapters on the linear layers named in `targets` (their last name component, e.g.
/// `query_key_value`, `q_proj`): A starts uniform in ±1/sqrt(in) (PEFT's default), B at zero, so
/// the model starts exactly as the base; the update is scaled by alpha / rank.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub seed: u64,
}

impl LoraConfig {
    /// PEFT's usual scale numerator (the update is scaled by alpha / rank).
    pub const DEFAULT_ALPHA: f64 = 16.0;

    /// PEFT's default targets for an architecture.
    pub fn default_targets(config: &crate::LmConfig) -> Vec<String> {
        match config {
            crate::LmConfig::GptNeox(_) => vec!["query_key_value".into()],
            crate::LmConfig::Llama(_) => vec!["q_proj".into(), "v_proj".into()],
        }
    }
}

/// A view of the weight store under a name prefix (cheap to clone).
#[derive(Clone)]
pub struct Weights {
    store: Arc<Store>,
    prefix: String,
}

impl Weights {
    pub fn new(
        tensors: HashMap<String, Weight>,
        origin: &str,
        mode: WeightMode,
        device: &Device,
    ) -> Self {
        Weights {
            store: Arc::new(Store {
                tensors: Mutex::new(tensors),
                origin: origin.to_string(),
                mode,
                device: device.clone(),
                vars: Mutex::new(Vec::new()),
                lora: None,
            }),
            prefix: String::new(),
        }
    }

    /// Adds LoRA adapters (as `Var`s, the only ones) to the matching linear layers built from
    /// this store from now on; the base weights stay as the mode loads them. Call before the
    /// model is built, on the store's only handle.
    pub fn with_lora(mut self, lora: LoraConfig) -> Result<Self, LmError> {
        let origin = self.store.origin.clone();
        let store = Arc::get_mut(&mut self.store).ok_or(LmError::Io {
            path: origin.into(),
            reason: "LoRA must be set before the weights are shared".into(),
        })?;
        store.lora = Some(lora);
        Ok(self)
    }

    /// Reads every weight file of a Hugging Face model directory (or one weight file).
    pub fn read_hf(path: &Path, mode: WeightMode, device: &Device) -> Result<Self, LmError> {
        let tensors = read_hf_tensors(path, device)?
            .into_iter()
            .map(|(name, t)| (name, Weight::Float(t)))
            .collect();
        Ok(Weights::new(
            tensors,
            &path.display().to_string(),
            mode,
            device,
        ))
    }

    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Weights {
            store: self.store.clone(),
            prefix,
        }
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }

    pub fn mode(&self) -> WeightMode {
        self.store.mode
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store
            .tensors
            .lock()
            .map(|t| t.contains_key(&self.full_name(name)))
            .unwrap_or(false)
    }

    /// Takes a weight out of the store (each is used once), checking its shape.
    fn take(&self, name: &str, dims: &[usize]) -> Result<(String, Weight), LmError> {
        let full = self.full_name(name);
        let weight = self
            .store
            .tensors
            .lock()
            .map_err(|_| self.error(&full, "the weight store was poisoned".into()))?
            .remove(&full)
            .ok_or_else(|| LmError::MissingTensor {
                origin: self.store.origin.clone(),
                name: full.clone(),
            })?;
        if weight.dims() != dims {
            return Err(LmError::TensorShape {
                origin: self.store.origin.clone(),
                name: full,
                expected: dims.to_vec(),
                found: weight.dims(),
            });
        }
        Ok((full, weight))
    }

    fn error(&self, name: &str, reason: String) -> LmError {
        LmError::Weights {
            path: PathBuf::from(&self.store.origin),
            reason: format!("{name}: {reason}"),
        }
    }

    /// A float tensor (norm weights, biases, embeddings); a `Var` when training.
    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<Tensor, LmError> {
        let (full, weight) = self.take(name, dims)?;
        let t = weight
            .to_f32(&self.store.device)
            .map_err(|e| self.error(&full, e.to_string()))?;
        self.maybe_var(full, t)
    }

    fn maybe_var(&self, full: String, t: Tensor) -> Result<Tensor, LmError> {
        if self.store.mode != WeightMode::Train {
            return Ok(t);
        }
        let var = Var::from_tensor(&t).map_err(|e| self.error(&full, e.to_string()))?;
        let out = var.as_tensor().clone();
        if let Ok(mut vars) = self.store.vars.lock() {
            vars.push((full, var));
        }
        Ok(out)
    }

    /// A linear layer `y = x·Wᵀ + b` with `W` of shape (out, in).
    pub fn linear(
        &self,
        name: &str,
        (out_dim, in_dim): (usize, usize),
        bias: bool,
    ) -> Result<Linear, LmError> {
        let (full, weight) = self.take(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let err = |e: candle_core::Error| self.error(&full, e.to_string());
        let bias = if bias {
            Some(self.tensor(&format!("{name}.bias"), &[out_dim])?)
        } else {
            None
        };
        let linear = match (self.store.mode, weight) {
            (WeightMode::Train, w) => {
                let t = w.to_f32(&self.store.device).map_err(err)?;
                Linear::from_weight(self.maybe_var(full.clone(), t)?, bias)
            }
            (WeightMode::Quantize(dtype), Weight::Float(t)) if in_dim % dtype.block_size() == 0 => {
                Linear::quantized(Arc::new(QTensor::quantize(&t, dtype).map_err(err)?), bias)
            }
            (_, Weight::Float(t)) => Linear::for_inference(&t, bias).map_err(err)?,
            (_, Weight::Quantized(q)) => Linear::quantized(q, bias),
        };
        match &self.store.lora {
            Some(cfg)
                if cfg
                    .targets
                    .iter()
                    .any(|t| Some(t.as_str()) == name.rsplit('.').next()) =>
            {
                let module = full.trim_end_matches(".weight").to_string();
                let lora = self.lora_pair(&module, cfg, (out_dim, in_dim))?;
                Ok(linear.with_lora(lora))
            }
            _ => Ok(linear),
        }
    }

    /// Fresh adapter variables for one layer, registered as `<module>.lora_A.weight` and
    /// `<module>.lora_B.weight`.
    fn lora_pair(
        &self,
        module: &str,
        cfg: &LoraConfig,
        (out_dim, in_dim): (usize, usize),
    ) -> Result<crate::linear::Lora, LmError> {
        use rand::{Rng, SeedableRng};
        let err = |e: candle_core::Error| self.error(module, e.to_string());
        let hash = module.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ hash);
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a: Vec<f32> = (0..cfg.rank * in_dim)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Var::from_vec(a, (cfg.rank, in_dim), &self.store.device).map_err(err)?;
        let b = Var::zeros((out_dim, cfg.rank), DType::F32, &self.store.device).map_err(err)?;
        let out = crate::linear::Lora {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: cfg.alpha / cfg.rank as f64,
        };
        if let Ok(mut vars) = self.store.vars.lock() {
            vars.push((format!("{module}.lora_A.weight"), a));
            vars.push((format!("{module}.lora_B.weight"), b));
        }
        Ok(out)
    }

    /// An embedding table (vocab, dim), as a [`Linear`] so that a tied head can share it; quantized
    /// tables stay quantized for inference, float ones are not quantized.
    pub fn table(&self, name: &str, (rows, dim): (usize, usize)) -> Result<Linear, LmError> {
        let full = self.full_name(name);
        let quantized = matches!(
            self.store
                .tensors
                .lock()
                .ok()
                .and_then(|t| t.get(&full).cloned()),
            Some(Weight::Quantized(_))
        );
        if quantized && self.store.mode != WeightMode::Train {
            let (_, weight) = self.take(name, &[rows, dim])?;
            if let Weight::Quantized(q) = weight {
                return Ok(Linear::quantized(q, None));
            }
        }
        Ok(Linear::from_weight(self.tensor(name, &[rows, dim])?, None))
    }

    /// Every `Var` created so far, under its HF name (training mode only).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.store
            .vars
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

/// Random weights for `config` (N(0, 0.02²) matrices, unit norms, zero biases), as a freshly
/// initialised transformers model; matrices are quantized one by one when `quantize` is given, so a
/// 2.8B model never exists in f32. For tests and benchmarks of model shapes nobody ships.
pub fn random_weights(
    config: &crate::LmConfig,
    seed: u64,
    quantize: Option<GgmlDType>,
    device: &Device,
) -> candle_core::Result<HashMap<String, Weight>> {
    use rand::SeedableRng;
    use rayon::prelude::*;
    let mut out = HashMap::new();
    for (index, (name, dims)) in config.tensor_shapes().into_iter().enumerate() {
        let n: usize = dims.iter().product();
        let is_norm = name.contains("norm");
        let t = if name.ends_with(".bias") {
            Tensor::zeros(dims.as_slice(), DType::F32, device)?
        } else if is_norm {
            Tensor::ones(dims.as_slice(), DType::F32, device)?
        } else {
            // Chunks with their own streams: the same weights on any number of threads.
            const CHUNK: usize = 1 << 20;
            let mut data = vec![0f32; n];
            data.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, chunk)| {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(((index as u64) << 32) | c as u64);
                    chunk
                        .iter_mut()
                        .for_each(|v| *v = cxr_train::sample_normal(&mut rng, 0.0, 0.02));
                });
            Tensor::from_vec(data, dims.as_slice(), device)?
        };
        let w = match quantize {
            Some(q) if dims.len() == 2 && dims[1] % q.block_size() == 0 && !is_norm => {
                Weight::Quantized(Arc::new(QTensor::quantize(&t, q)?))
            }
            _ => Weight::Float(t),
        };
        out.insert(name, w);
    }
    Ok(out)
}

/// Every tensor of a Hugging Face model directory (or one weight file) as f32, by name.
pub fn read_hf_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, LmError> {
    let mut tensors = HashMap::new();
    for file in weight_files(path)? {
        let io = |e: candle_core::Error| LmError::Weights {
            path: file.clone(),
            reason: e.to_string(),
        };
        let f32 = |t: Tensor| match t.dtype() {
            DType::F32 => Ok(t),
            _ => t.to_dtype(DType::F32),
        };
        if file.extension().is_some_and(|e| e == "safetensors") {
            // Memory-mapped, each tensor copied out (and widened to f32) one at a time: the file
            // is never read into memory whole (candle's `safetensors::load` does that, doubling
            // the peak: 22 GB for dolly-v2-3b in f32), and its pages stay the kernel's to evict.
            // SAFETY: the mapping lives only while this loop copies from it; a file truncated by
            // another process meanwhile would fault, as with every mmap-based loader.
            let st =
                unsafe { candle_core::safetensors::MmapedSafetensors::new(&file) }.map_err(io)?;
            for (name, _) in st.tensors() {
                let t = st.load(&name, device).and_then(f32).map_err(io)?;
                tensors.insert(name, t);
            }
        } else {
            let checked = cxr_train::pth::read_pth(&file, None).map_err(|e| LmError::Weights {
                path: file.clone(),
                reason: e.reason,
            })?;
            for (name, t) in checked {
                tensors.insert(name, f32(t).map_err(io)?);
            }
        }
    }
    Ok(tensors)
}

/// The weight files of a model directory, in load order; a file path is returned as is.
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>, LmError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let missing = || LmError::Weights {
        path: path.to_path_buf(),
        reason:
            "no model.safetensors, model.safetensors.index.json, pytorch_model.bin or its index"
                .into(),
    };
    for (single, index) in [
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ] {
        if path.join(single).is_file() {
            return Ok(vec![path.join(single)]);
        }
        let index_path = path.join(index);
        if index_path.is_file() {
            let bad = |reason: String| LmError::Weights {
                path: index_path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(&index_path).map_err(|e| bad(e.to_string()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("no weight_map".into()))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            files.sort();
            files.dedup();
            // A shard is a file beside the index: a name that climbs out (`..`), is absolute or
            // holds a separator would read any file the process can.
            if let Some(f) = files.iter().find(|f| !is_plain_file_name(f)) {
                return Err(bad(format!(
                    "weight_map names shard {f:?}, which is not a plain file name inside the model folder"
                )));
            }
            return Ok(files.into_iter().map(|f| path.join(f)).collect());
        }
    }
    Err(missing())
}

/// A single normal path component: no separator of any platform, not `.` or `..`, no NUL.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.contains(':')
}
