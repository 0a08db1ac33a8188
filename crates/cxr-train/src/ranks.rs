//! Data-parallel training: the ranks of a run and the one collective it needs, a sum of each
//! gradient over the ranks. Every rank takes the same step from the same summed gradients, so
//! the weights stay identical on all ranks without ever being sent.
//!
//! - [`Single`]: one rank (every run that is not data-parallel).
//! - [`ThreadRanks`]: ranks as threads of one process on the CPU; sums in rank order, so every
//!   rank gets the same bits. What the tests run, and `llm-cxr train --ranks N` on the CPU.
//! - `NcclRank` (feature `nccl`): one GPU per rank, NCCL's all-reduce, ranks as threads of
//!   one process (`llm-cxr train --ranks N --device cuda`).

use std::sync::{Arc, Condvar, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// One rank's view of a data-parallel run.
pub trait Ranks {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// The sum of `t` over the ranks (each rank passes its own and gets the same sum back).
    /// Every rank must call it, with tensors of one shape, in the same order.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Tells the other ranks this one has failed: their pending and later sums return an error
    /// instead of waiting for it forever.
    fn abort(&self);
}

/// Replaces each variable's gradient in `grads` by its sum over the ranks, in the order of
/// `vars`, which every rank must share. A variable with a gradient on some ranks counts zeros on
/// the others; one with a gradient on none keeps none, so the optimizer leaves it alone as it
/// does on a single rank.
pub fn all_reduce_grads<'a>(
    ranks: &dyn Ranks,
    grads: &mut GradStore,
    vars: impl IntoIterator<Item = &'a Var>,
) -> Result<()> {
    if ranks.world() == 1 {
        return Ok(());
    }
    let vars: Vec<&Var> = vars.into_iter().collect();
    let Some(first) = vars.first() else {
        return Ok(());
    };
    let present: Vec<f32> = vars
        .iter()
        .map(|v| f32::from(u8::from(grads.get(v.as_tensor()).is_some())))
        .collect();
    let present = Tensor::new(present, first.device())?;
    let present: Vec<f32> = ranks.all_reduce_sum(&present)?.to_vec1()?;
    for (var, count) in vars.into_iter().zip(present) {
        if count == 0.0 {
            continue;
        }
        let local = match grads.remove(var.as_tensor()) {
            Some(g) => g,
            None => var.as_tensor().zeros_like()?,
        };
        grads.insert(var.as_tensor(), ranks.all_reduce_sum(&local)?);
    }
    Ok(())
}

/// The one rank of a run that is not data-parallel.
pub struct Single;

impl Ranks for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn abort(&self) {}
}

/// Ranks as threads of one process: each call hands in a tensor and waits; the last rank to
/// arrive adds the tensors, in rank order, once, and every rank takes that sum.
pub struct ThreadRanks {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    state: Mutex<Rendezvous>,
    changed: Condvar,
}

/// One round of sums: each rank's tensor, then the sum, which each rank reads once.
struct Rendezvous {
    slots: Vec<Option<Tensor>>,
    sum: Option<Tensor>,
    /// Ranks that have read this round's sum; the last one clears the round.
    read: usize,
    aborted: bool,
}

impl ThreadRanks {
    /// The `world` ranks of one run, rank k at index k: give each its own thread.
    pub fn group(world: usize) -> Vec<ThreadRanks> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(Rendezvous {
                slots: vec![None; world],
                sum: None,
                read: 0,
                aborted: false,
            }),
            changed: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadRanks {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// The error of a rank stopped because another failed (the other's error says why).
pub const ABORTED: &str = "another rank failed; this one stops";

fn aborted() -> candle_core::Error {
    candle_core::Error::Msg(ABORTED.into())
}

impl Ranks for ThreadRanks {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let wait = |s| self.shared.changed.wait(s).map_err(|_| aborted());
        let mut s = self.shared.state.lock().map_err(|_| aborted())?;
        // A rank back for its next sum before the others have read this one waits for them.
        while s.sum.is_some() && !s.aborted {
            s = wait(s)?;
        }
        if s.aborted {
            return Err(aborted());
        }
        s.slots[self.rank] = Some(t.clone());
        if s.slots.iter().all(Option::is_some) {
            let mut parts = s.slots.iter().flatten();
            let first = parts.next().expect("world >= 1").clone();
            match parts.try_fold(first, |sum, part| sum + part) {
                Ok(sum) => s.sum = Some(sum),
                Err(e) => {
                    s.aborted = true;
                    self.shared.changed.notify_all();
                    return Err(e);
                }
            }
            self.shared.changed.notify_all();
        }
        // Once the sum is made, it is read even if a rank fails meanwhile: that failure stops
        // the next round.
        while s.sum.is_none() && !s.aborted {
            s = wait(s)?;
        }
        let sum = s.sum.clone().ok_or_else(aborted)?;
        s.read += 1;
        if s.read == self.shared.world {
            s.slots.iter_mut().for_each(|slot| *slot = None);
            s.sum = None;
            s.read = 0;
            self.shared.changed.notify_all();
        }
        Ok(sum)
    }

    fn abort(&self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.aborted = true;
        }
        self.shared.changed.notify_all();
    }
}

#[cfg(feature = "nccl")]
pub use nccl::{NcclId, NcclRank};

#[cfg(feature = "nccl")]
mod nccl {
    use std::sync::Arc;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
    use candle_core::cuda_backend::{CudaDevice, CudaStorage};
    use candle_core::{CustomOp1, Device, Layout, Result, Shape, Tensor};

    /// The identifier rank 0 makes and every rank joins with (copy it to each rank's thread).
    #[derive(Clone, Copy)]
    pub struct NcclId(Id);

    impl NcclId {
        pub fn new() -> Result<Self> {
            Id::new()
                .map(NcclId)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL: {e:?}")))
        }
    }

    /// One GPU of a data-parallel run, joined to the others through NCCL. Made on the thread
    /// that will use it (its communicator stays there).
    pub struct NcclRank {
        comm: Arc<Comm>,
    }

    impl NcclRank {
        /// Joins rank `rank` of `world` on `device` (a CUDA device); blocks until every rank has
        /// joined.
        pub fn join(device: &Device, rank: usize, world: usize, id: NcclId) -> Result<Self> {
            let Device::Cuda(dev) = device else {
                candle_core::bail!(
                    "NCCL ranks run on CUDA devices, not {:?}",
                    device.location()
                );
            };
            // NCCL takes the GPU current on the calling thread: this rank's, not the first.
            let stream = dev.cuda_stream();
            stream
                .context()
                .bind_to_thread()
                .map_err(|e| candle_core::Error::Msg(format!("NCCL rank {rank}: {e:?}")))?;
            let comm = Comm::from_rank(stream, rank, world, id.0)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL rank {rank}: {e:?}")))?;
            Ok(NcclRank {
                comm: Arc::new(comm),
            })
        }
    }

    impl super::Ranks for NcclRank {
        fn rank(&self) -> usize {
            self.comm.rank()
        }
        fn world(&self) -> usize {
            self.comm.world_size()
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
            t.contiguous()?.apply_op1_no_bwd(&AllReduce {
                comm: self.comm.clone(),
            })
        }
        fn abort(&self) {
            // NCCL has no way to wake a peer blocked in a collective but the peer's own abort;
            // the communicator aborts when dropped, which the failing rank's return does.
        }
    }

    struct AllReduce {
        comm: Arc<Comm>,
    }

    impl CustomOp1 for AllReduce {
        fn name(&self) -> &'static str {
            "nccl-all-reduce-sum"
        }

        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("NCCL sums CUDA tensors only")
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            let n = l.shape().elem_count();
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("all-reduce: the tensor must be contiguous");
            };
            let dev: CudaDevice = s.device().clone();
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            // SAFETY: NCCL writes all n elements before anything reads them.
            let mut dst = unsafe { dev.alloc::<f32>(n) }?;
            self.comm
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn thread_ranks_sum_in_rank_order_and_a_failed_rank_stops_the_others() {
        let world = 3;
        let results: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ThreadRanks::group(world)
                .into_iter()
                .map(|r| {
                    scope.spawn(move || {
                        (0..50)
                            .map(|round| {
                                let v = (r.rank() * 10 + round) as f32;
                                let t = Tensor::new(&[v, 1.0], &Device::Cpu).unwrap();
                                r.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (round, sum) in results[0].iter().enumerate() {
            assert_eq!(sum, &[(30 + 3 * round) as f32, 3.0], "round {round}");
        }
        assert!(results.iter().all(|r| r == &results[0]));

        // Rank 1 fails before its second sum: rank 0, waiting for it, gets an error.
        let outcome: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = ThreadRanks::group(2)
                .into_iter()
                .map(|r| {
                    scope.spawn(move || {
                        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
                        r.all_reduce_sum(&t).unwrap();
                        if r.rank() == 1 {
                            r.abort();
                            return false;
                        }
                        r.all_reduce_sum(&t).is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcome, [false, false]);
    }

    #[test]
    fn gradients_are_summed_and_one_no_rank_has_stays_absent() {
        let grads: Vec<Vec<Option<Vec<f32>>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ThreadRanks::group(2)
                .into_iter()
                .map(|r| {
                    scope.spawn(move || {
                        let dev = Device::Cpu;
                        let (a, b, c) = (
                            Var::new(&[1f32, 2.0], &dev).unwrap(),
                            Var::new(&[3f32], &dev).unwrap(),
                            Var::new(&[5f32], &dev).unwrap(),
                        );
                        // a: a gradient on both ranks; b: on rank 1 only; c: on none.
                        let mut loss = (a.as_tensor() * (r.rank() as f64 + 1.0)).unwrap();
                        loss = loss.sum_all().unwrap();
                        if r.rank() == 1 {
                            loss = (loss + b.as_tensor().sum_all().unwrap()).unwrap();
                        }
                        let mut g = loss.backward().unwrap();
                        all_reduce_grads(&r, &mut g, [&a, &b, &c]).unwrap();
                        [&a, &b, &c]
                            .iter()
                            .map(|v| g.get(v.as_tensor()).map(|t| t.to_vec1().unwrap()))
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for g in &grads {
            assert_eq!(g, &[Some(vec![3.0, 3.0]), Some(vec![1.0]), None]);
        }
    }
}
