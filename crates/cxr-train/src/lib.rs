//! Training plumbing every llm-cxr trainer shares (the classifier, the VQ-GAN and the language
//! model): an AdamW whose moments can be saved and restored, checkpoints that hold weights,
//! optimizer state and metadata in one safetensors file written atomically, one way to resume
//! from them ([`resume`]), so a run killed at any moment resumes from its last checkpoint and
//! ends with the same weights, one gradient accumulation ([`grad_accum`]) and one image-batch
//! loader ([`image_batch`]), for trainers and evaluations.
//!
//! candle-nn's own `AdamW` keeps its moments private, which makes exact resumption impossible;
//! this one follows `torch.optim.AdamW` (decoupled weight decay, bias correction) step for step.

#[macro_use]
mod simd;
pub mod conv;
pub mod grad_accum;
pub mod group_norm;
pub mod image_batch;
pub mod pth;
pub mod resume;
pub mod run_record;
pub mod winograd;

pub use grad_accum::GradAccumulator;
pub use resume::{Resume, ResumeError};

pub use run_record::{
    file_fingerprint, files_fingerprint, model_dir_fingerprint, Fingerprint, RunRecord,
};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
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
    /// First and second moments, element for element of the variable (contiguous order).
    m: Vec<f32>,
    v: Vec<f32>,
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

/// One AdamW update of a contiguous f32 variable from its gradient.
struct Update<'a> {
    moments: std::sync::Mutex<(&'a mut [f32], &'a mut [f32])>,
    lr: f32,
    /// Elements from `.0` on use rate `.1` and decay `.2` instead.
    tail: Option<(usize, f32, f32)>,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    bc1: f32,
    bc2: f32,
    /// Gradients are multiplied by this first (clipping).
    grad_scale: f32,
}

impl Update<'_> {
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, decay: f32) {
        for i in 0..p.len() {
            let gi = g[i] * self.grad_scale;
            m[i] = self.beta1 * m[i] + (1.0 - self.beta1) * gi;
            v[i] = self.beta2 * v[i] + (1.0 - self.beta2) * gi * gi;
            let update = (m[i] / self.bc1) / ((v[i] / self.bc2).sqrt() + self.eps);
            p[i] = p[i] * decay - lr * update;
        }
    }
}

impl candle_core::InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "cxr-adamw"
    }

    fn cpu_fwd(
        &self,
        ps: &mut candle_core::CpuStorage,
        pl: &candle_core::Layout,
        gs: &candle_core::CpuStorage,
        gl: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let (candle_core::CpuStorage::F32(p), candle_core::CpuStorage::F32(g)) = (ps, gs) else {
            candle_core::bail!("AdamW: f32 variables and gradients only");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle_core::bail!("AdamW: contiguous variables and gradients only");
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut guard = self.moments.lock().expect("moments lock");
        let (m, v) = &mut *guard;
        if p.len() != g.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!(
                "AdamW: {} values, {} gradients, {} moments",
                p.len(),
                g.len(),
                m.len()
            );
        }
        const CHUNK: usize = 1 << 14;
        let tail_start = self.tail.map_or(usize::MAX, |t| t.0);
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .enumerate()
            .for_each(|(k, ((p, g), (m, v)))| {
                // The chunk's elements before the tail, then those in it: two plain loops.
                let split = tail_start.saturating_sub(k * CHUNK).min(p.len());
                let (p0, p1) = p.split_at_mut(split);
                let (m0, m1) = m.split_at_mut(split);
                let (v0, v1) = v.split_at_mut(split);
                self.apply(p0, &g[..split], m0, v0, self.lr, self.decay);
                if let Some((_, lr, decay)) = self.tail {
                    self.apply(p1, &g[split..], m1, v1, lr, decay);
                }
            });
        Ok(())
    }
}

impl AdamW {
    /// Named variables, e.g. a `VarMap`'s; they are kept in name order.
    pub fn new(mut vars: Vec<(String, Var)>, config: AdamWConfig) -> candle_core::Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                Slot {
                    name,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                    var,
                    tail_lr: None,
                }
            })
            .collect();
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
                sum += sum_of_squares(g)?;
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
            let g = g.detach().to_dtype(DType::F32)?.contiguous()?;
            let tail = slot.tail_lr.map(|(start, factor)| {
                let lr = c.lr * factor;
                (start, lr as f32, (1.0 - lr * c.weight_decay) as f32)
            });
            let op = Update {
                moments: std::sync::Mutex::new((&mut slot.m, &mut slot.v)),
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
            slot.var.as_tensor().inplace_op2(&g, &op)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`adamw.m.<name>`, `adamw.v.<name>`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                let shape = s.var.shape().clone();
                let dev = s.var.device();
                [
                    (
                        format!("adamw.m.{}", s.name),
                        Tensor::from_slice(&s.m, shape.clone(), dev),
                    ),
                    (
                        format!("adamw.v.{}", s.name),
                        Tensor::from_slice(&s.v, shape, dev),
                    ),
                ]
            })
            .map(|(name, t)| (name, t.expect("moments match their variable")))
            .collect()
    }

    /// Restores moments and step count saved by [`AdamW::state`].
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> candle_core::Result<()> {
        for slot in &mut self.slots {
            for (kind, target) in [("m", &mut slot.m), ("v", &mut slot.v)] {
                let key = format!("adamw.{kind}.{}", slot.name);
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {key}")))?;
                let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                if values.len() != target.len() {
                    candle_core::bail!(
                        "{key}: {} values for {} weights",
                        values.len(),
                        target.len()
                    );
                }
                *target = values;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The sum of the squares of a tensor's values, in f64, in one pass and without a temporary.
pub fn sum_of_squares(t: &Tensor) -> candle_core::Result<f64> {
    use rayon::prelude::*;
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage else {
        candle_core::bail!("sum_of_squares: f32 CPU tensors only");
    };
    let (a, b) = layout.contiguous_offsets().expect("made contiguous above");
    // Partial sums per fixed chunk, added in order: the same bits whatever the thread schedule.
    let parts: Vec<f64> = v[a..b]
        .par_chunks(1 << 16)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .collect();
    Ok(parts.iter().sum())
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

/// The values of a contiguous f32 CPU storage, for custom ops; `op` names the op in errors.
pub fn contiguous_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: only f32 is supported");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// The largest absolute difference between two tensors of the same shape (parity checks).
/// This process's peak resident memory in MiB (Linux `VmHWM`; NaN elsewhere), for benchmarks.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    if a.dims() != b.dims() {
        candle_core::bail!("shapes differ: {:?} vs {:?}", a.dims(), b.dims());
    }
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar()
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
    fn sum_of_squares_does_not_depend_on_the_thread_count() {
        // The gradient norm scales every clipped step: its bits must not follow the threads.
        let t = Tensor::randn(0f32, 1.0, 1 << 20, &Device::Cpu).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| sum_of_squares(&t).unwrap())
        };
        let one = run(1);
        assert!((one / (1 << 20) as f64 - 1.0).abs() < 0.01, "{one}");
        for threads in [2, 3, 8] {
            assert_eq!(run(threads).to_bits(), one.to_bits(), "{threads} threads");
        }
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
