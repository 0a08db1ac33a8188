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

/// Replaces each variable's gradient in `grads` by its sum over the ranks (a variable without
/// one counts zeros), in the order of `vars`, which every rank must share.
pub fn all_reduce_grads<'a>(
    ranks: &dyn Ranks,
    grads: &mut GradStore,
    vars: impl IntoIterator<Item = &'a Var>,
) -> Result<()> {
    if ranks.world() == 1 {
        return Ok(());
    }
    for var in vars {
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

/// Ranks as threads of one process: each call hands in a tensor, waits for all ranks, and
/// adds the tensors in rank order.
pub struct ThreadRanks {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    state: Mutex<Rendezvous>,
    changed: Condvar,
}

struct Rendezvous {
    slots: Vec<Option<Tensor>>,
    /// Ranks that have read the current round's sum.
    read: usize,
    /// Rounds completed: a rank waits for the round it joined to end.
    round: u64,
    aborted: bool,
}

impl ThreadRanks {
    /// The `world` ranks of one run, rank k at index k: give each its own thread.
    pub fn group(world: usize) -> Vec<ThreadRanks> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(Rendezvous {
                slots: vec![None; world],
                read: 0,
                round: 0,
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

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Rendezvous>> {
        self.shared
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("a rank panicked".into()))
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
        let world = self.shared.world;
        let mut s = self.lock()?;
        // A rank that comes back for the next sum before the others have read this one waits.
        while s.read > 0 && !s.aborted {
            s = self.shared.changed.wait(s).map_err(|_| aborted())?;
        }
        if s.aborted {
            return Err(aborted());
        }
        let round = s.round;
        s.slots[self.rank] = Some(t.clone());
        self.shared.changed.notify_all();
        while s.slots.iter().any(Option::is_none) && s.round == round && !s.aborted {
            s = self.shared.changed.wait(s).map_err(|_| aborted())?;
        }
        if s.aborted {
            return Err(aborted());
        }
        let mut sum = s.slots[0].clone().expect("every slot is filled");
        for part in s.slots[1..].iter().flatten() {
            sum = (sum + part)?;
        }
        s.read += 1;
        if s.read == world {
            s.slots.iter_mut().for_each(|slot| *slot = None);
            s.read = 0;
            s.round += 1;
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
            let comm = Comm::from_rank(dev.cuda_stream(), rank, world, id.0)
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
    use candle_core::Device;

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
}
