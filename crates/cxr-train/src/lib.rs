//! Training plumbing every llm-cxr trainer shares (the classifier, the VQ-GAN and the language
//! model): an AdamW whose moments can be saved and restored, checkpoints that hold weights,
//! optimizer state and metadata in one safetensors file written atomically, one way to resume
//! from them ([`resume`]), so a run killed at any moment resumes from its last checkpoint and
//! ends with the same weights, one gradient accumulation ([`grad_accum`]) and one image-batch
//! loader ([`image_batch`]), for trainers and evaluations.
//!
//! candle-nn's own `AdamW` keeps its moments private, which makes exact resumption impossible;
//! this one follows `torch.optim.AdamW` (decoupled weight decay, bias correction) step for step.

pub mod grad_accum;
pub mod image_batch;
pub mod precision;
pub mod pth;
pub mod ranks;
pub mod resume;
pub mod run_record;

pub use grad_accum::GradAccumulator;
pub use precision::{LossScale, Precision};
pub use ranks::{Ranks, Single, ThreadRanks};
pub use resume::{Resume, ResumeError};

pub use run_record::{
    file_fingerprint, files_fingerprint, model_dir_fingerprint, Fingerprint, RunRecord,
};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use cxr_ops::adamw::{AdamWStep, Moments};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Process settings for CPU work, to call once at program start: freed buffers stay in the heap
/// (glibc `mallopt`). candle allocates a fresh output per op; a buffer that glibc maps on its own
/// is faulted in page by page (the kernel zeroing every page) and unmapped again when freed, and
/// the unmapping interrupts the other cores to flush their TLBs. The threshold for mapping is
/// raised to glibc's largest, 32 MiB (a larger value is refused, and setting the trim threshold
/// alone would pin the threshold at its 128 KiB start); larger buffers are not mapped either
/// (`M_MMAP_MAX` 0), and the heap is never trimmed (`M_TRIM_THRESHOLD` -1), so the process keeps
/// its peak. A training step of the 70m shape makes about ten 100 MB buffers (logits, embedding
/// gradients): 1.5 s per step with these settings, 2.0 s without the last two; the 410m shape
/// 10.8 s against 12.2 s. Returns whether glibc took every setting. (Giving candle's element-wise pool one thread, `CANDLE_NUM_THREADS=1`, speeds a
/// float prefill by ~10 % but halves quantized decoding, which runs on that pool; not done.)
pub fn tune_cpu_runtime() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
            && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
            && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// AdamW hyper-parameters (PyTorch's defaults, weight decay 0.01).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    moments: Moments,
    /// Elements from this index on learn at the rate times this factor (fresh embedding rows).
    tail_lr: Option<(usize, f64)>,
}

/// AdamW over named variables. Each step updates a variable and its moments in place, in one
/// pass over memory (no temporary tensors: the moments of a 50k-row embedding would otherwise
/// cost several 100 MB of fresh allocations per step).
pub struct AdamW {
    pub config: AdamWConfig,
    step: u64,
    slots: Vec<Slot>,
}

impl AdamW {
    /// Named variables, e.g. a `VarMap`'s; they are kept in name order.
    pub fn new(mut vars: Vec<(String, Var)>, config: AdamWConfig) -> candle_core::Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name,
                    moments: Moments::zeros(&var)?,
                    var,
                    tail_lr: None,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            config,
            step: 0,
            slots,
        })
    }

    /// Rows `first_row..` of the 2-D variable `name` learn at `factor` times the rate (fresh
    /// vocabulary rows, which one global rate would barely move). False when there is no such
    /// variable.
    pub fn set_tail_lr(&mut self, name: &str, first_row: usize, factor: f64) -> bool {
        let Some(slot) = self.slots.iter_mut().find(|s| s.name == name) else {
            return false;
        };
        let row = slot.var.dims().get(1..).map_or(1, |d| d.iter().product());
        slot.tail_lr = Some((first_row * row, factor));
        true
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update from gradients; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step_scaled(grads, 1.0)
    }

    /// The global L2 norm of the gradients of this optimizer's variables.
    pub fn grad_norm(&self, grads: &GradStore) -> candle_core::Result<f64> {
        let mut sum = 0.0;
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                sum += cxr_ops::sum_of_squares(g)?;
            }
        }
        Ok(sum.sqrt())
    }

    /// One update from gradients multiplied by `grad_scale` (e.g. clip / norm).
    pub fn step_scaled(&mut self, grads: &GradStore, grad_scale: f64) -> candle_core::Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let tail = slot.tail_lr.map(|(start, factor)| {
                let lr = c.lr * factor;
                (start, lr as f32, (1.0 - lr * c.weight_decay) as f32)
            });
            let step = AdamWStep {
                lr: c.lr as f32,
                tail,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                decay: (1.0 - c.lr * c.weight_decay) as f32,
                bc1: bc1 as f32,
                bc2: bc2 as f32,
                grad_scale: grad_scale as f32,
            };
            cxr_ops::adamw::update(&slot.var, g, &mut slot.moments, &step)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`adamw.m.<name>`, `adamw.v.<name>`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for s in &self.slots {
            let (m, v) = s
                .moments
                .tensors(&s.var)
                .expect("moments match their variable");
            out.push((format!("adamw.m.{}", s.name), m));
            out.push((format!("adamw.v.{}", s.name), v));
        }
        out
    }

    /// Restores moments and step count saved by [`AdamW::state`].
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> candle_core::Result<()> {
        for slot in &mut self.slots {
            let get = |kind: &str| {
                let key = format!("adamw.{kind}.{}", slot.name);
                tensors
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {key}")))
                    .and_then(|t| {
                        if t.elem_count() != slot.var.elem_count() {
                            candle_core::bail!(
                                "{key}: {} values for {} weights",
                                t.elem_count(),
                                slot.var.elem_count()
                            );
                        }
                        Ok(t)
                    })
            };
            slot.moments = Moments::load(&slot.var, get("m")?, get("v")?)?;
        }
        self.step = step;
        Ok(())
    }
}

fn to_bytes(t: &Tensor) -> candle_core::Result<(safetensors::Dtype, Vec<u8>)> {
    let t = t.to_dtype(DType::F32)?.flatten_all()?;
    let v: Vec<f32> = t.to_vec1()?;
    Ok((
        safetensors::Dtype::F32,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    ))
}

/// Writes tensors and string metadata to one safetensors file, atomically.
pub fn save_checkpoint(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), TrainError> {
    let err = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dtype, bytes) = to_bytes(t)?;
        owned.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map_err(|e| err(e.to_string()))?,
            ))
        })
        .collect::<Result<_, TrainError>>()?;
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    cxr_data::write_atomic(path, &bytes).map_err(|e| err(e.to_string()))
}

/// The device the environment variable `var` names (`cpu`, the default, or `cuda:N`), for
/// benchmarks and the device tests; panics on another value or a GPU that is not there.
pub fn device_from_env(var: &str) -> Device {
    match std::env::var(var).as_deref() {
        Err(_) | Ok("cpu") => Device::Cpu,
        Ok(spec) => {
            let ordinal = spec
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{var}={spec}: expected cpu or cuda:N"));
            Device::new_cuda(ordinal).unwrap_or_else(|e| panic!("{var}={spec}: {e}"))
        }
    }
}

/// This process's peak resident memory in MiB (Linux `VmHWM`; NaN elsewhere), for benchmarks.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// One draw from N(mean, std²) by Box-Muller (the trainers' seeded initialisations).
pub fn sample_normal(rng: &mut impl rand::Rng, mean: f32, std: f32) -> f32 {
    let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
    mean + std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// A checkpoint's tensors by name and its string metadata.
pub type Checkpoint = (HashMap<String, Tensor>, BTreeMap<String, String>);

/// Reads a checkpoint written by [`save_checkpoint`]: its tensors and its metadata.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint, TrainError> {
    let err = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(format!("not a checkpoint: {e}")))?;
    let metadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| err(e.to_string()))?;
    Ok((tensors, metadata))
}

/// The example indices of step `step` when each epoch visits the `n` examples in a permutation
/// drawn from `(seed, epoch)`: the data position is the step count alone, so a resumed run sees
/// the same batches as one never stopped.
pub fn batch_indices(n: usize, batch: usize, seed: u64, step: u64) -> Vec<usize> {
    let start = step as usize * batch;
    (start..start + batch)
        .map(|k| {
            let (epoch, pos) = (k / n, k % n);
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
            order[pos]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// glibc refuses an mmap threshold above 32 MiB without a word; every setting must take.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_cpu_runtime_settings() {
        assert!(super::tune_cpu_runtime());
    }

    use super::*;

    #[test]
    fn data_order_is_a_permutation_per_epoch() {
        let mut seen: Vec<usize> = (0..5).flat_map(|s| batch_indices(10, 2, 7, s)).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(batch_indices(10, 2, 7, 3), batch_indices(10, 2, 7, 3));
    }

    #[test]
    fn adamw_matches_a_hand_computed_torch_step() {
        // torch.optim.AdamW(lr=0.1, weight_decay=0.01) on p = [1.0, -2.0] with grad [0.5, -0.25]:
        // first step moves each weight by -lr * sign(g) (bias-corrected) after decay.
        let var = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            vec![("p".into(), var.clone())],
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let loss = (var.as_tensor() * &Tensor::new(&[0.5f32, -0.25], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let p: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        let want = [
            1.0 * (1.0 - 0.001) - 0.1 * 0.5 / (0.5 + 1e-8),
            -2.0 * (1.0 - 0.001) + 0.1 * 0.25 / (0.25 + 1e-8),
        ];
        for (a, b) in p.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        // The moments hold no autograd history: a tracked moment chains every past step's
        // graph and memory grows without bound (18 GB after a few DenseNet steps).
        assert!(opt.state().iter().all(|(_, t)| !t.track_op()));
    }

    #[test]
    fn rows_after_the_tail_start_learn_at_their_own_rate() {
        // The first Adam step moves each weight by lr (no decay): row 0 by 0.01, rows 1 and 2
        // (the "fresh" rows) by 25 x 0.01.
        let var = Var::new(&[[1.0f32, 1.0], [1.0, 1.0], [1.0, 1.0]], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            vec![("table".into(), var.clone())],
            AdamWConfig {
                lr: 0.01,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!opt.set_tail_lr("other", 1, 25.0));
        assert!(opt.set_tail_lr("table", 1, 25.0));
        let loss = var.as_tensor().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let p: Vec<Vec<f32>> = var.as_tensor().to_vec2().unwrap();
        let moved: Vec<f32> = p.iter().map(|r| 1.0 - r[0]).collect();
        for (got, want) in moved.iter().zip([0.01, 0.25, 0.25]) {
            assert!((got - want).abs() < 1e-5, "{moved:?}");
        }
    }

    #[test]
    fn checkpoint_round_trip_with_optimizer_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck/checkpoint.safetensors");
        let var = Var::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default()).unwrap();
        let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let mut tensors = vec![("w".to_string(), var.as_tensor().clone())];
        tensors.extend(opt.state());
        let meta = BTreeMap::from([("step".to_string(), "1".to_string())]);
        save_checkpoint(&path, &tensors, &meta).unwrap();
        let (loaded, m) = load_checkpoint(&path, &Device::Cpu).unwrap();
        assert_eq!(m["step"], "1");
        assert_eq!(
            loaded["w"].to_vec2::<f32>().unwrap(),
            var.as_tensor().to_vec2::<f32>().unwrap()
        );
        let mut fresh =
            AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default()).unwrap();
        fresh.load_state(&loaded, 1).unwrap();
        assert_eq!(fresh.steps(), 1);
        let e = load_checkpoint(&dir.path().join("missing.safetensors"), &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("missing.safetensors"));
    }
}
