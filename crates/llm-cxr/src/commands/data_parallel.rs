//! `train --ranks N`: data-parallel fine-tuning in one process, one thread per rank, each with
//! its own copy of the model on its own device (`cxr_instruct::finetune::finetune_rank`). On the
//! CPU the ranks sum their gradients in memory (`cxr_train::ThreadRanks`: for tests and
//! checking, the ranks share the cores); with `--device cuda:K`, rank r runs on GPU K + r and
//! the ranks sum through NCCL (`--features nccl`). Rank 0's progress reaches the caller; the
//! first rank to fail ends the run with its error, the others stopped or left to the process's
//! exit (a rank blocked in NCCL cannot be woken).

use std::sync::{mpsc, Arc, Mutex};

use anyhow::Context;
use candle_core::Device;
use cxr_instruct::finetune::{finetune_rank, FinetuneOptions, StepReport, Trainable};
use cxr_instruct::Tokenized;
use cxr_train::Ranks;

use super::device::DeviceSpec;

/// How the ranks of a run find each other.
enum Group {
    /// CPU ranks, each taken once by its thread.
    Threads(Mutex<Vec<Option<cxr_train::ThreadRanks>>>),
    #[cfg(feature = "nccl")]
    Nccl(cxr_train::ranks::NcclId, usize),
}

impl Group {
    fn new(device: DeviceSpec, world: usize) -> anyhow::Result<Group> {
        match device {
            DeviceSpec::Cpu => Ok(Group::Threads(Mutex::new(
                cxr_train::ThreadRanks::group(world)
                    .into_iter()
                    .map(Some)
                    .collect(),
            ))),
            #[cfg(feature = "nccl")]
            DeviceSpec::Cuda(_) => Ok(Group::Nccl(cxr_train::ranks::NcclId::new()?, world)),
            #[cfg(not(feature = "nccl"))]
            DeviceSpec::Cuda(_) => anyhow::bail!(
                "--ranks on GPUs sums gradients through NCCL: this binary was built without it \
                 (build with `--features nccl`, docs/gpu.md)"
            ),
        }
    }

    /// Rank `rank`'s handle, made on its own thread.
    fn join(
        &self,
        rank: usize,
        #[allow(unused)] device: &Device,
    ) -> anyhow::Result<Box<dyn Ranks>> {
        match self {
            Group::Threads(slots) => {
                let mut slots = slots
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a rank panicked"))?;
                let ranks = slots[rank].take().context("a rank joined twice")?;
                Ok(Box::new(ranks))
            }
            #[cfg(feature = "nccl")]
            Group::Nccl(id, world) => Ok(Box::new(cxr_train::ranks::NcclRank::join(
                device, rank, *world, *id,
            )?)),
        }
    }
}

enum Message {
    Step(StepReport),
    Done(usize, Result<Option<Box<Trainable>>, String>),
}

/// Fine-tunes with `world` ranks on `device` (and the GPUs after it), each loading its model
/// with `load`; returns rank 0's trained model.
pub fn finetune(
    world: usize,
    device: DeviceSpec,
    load: impl Fn(&Device) -> anyhow::Result<Trainable> + Send + Sync + 'static,
    train: Vec<Tokenized>,
    validation: Vec<Tokenized>,
    opts: &FinetuneOptions,
    on_step: &mut dyn FnMut(&StepReport),
) -> anyhow::Result<Trainable> {
    // Every device opened first: a missing GPU fails here, before any rank waits for it.
    let devices = (0..world)
        .map(|rank| match device {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(first) => DeviceSpec::Cuda(first + rank).open(),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let group = Arc::new(Group::new(device, world)?);
    let (train, validation, load) = (Arc::new(train), Arc::new(validation), Arc::new(load));
    let (tx, rx) = mpsc::channel();
    for (rank, device) in devices.into_iter().enumerate() {
        let (tx, group, load) = (tx.clone(), group.clone(), load.clone());
        let (train, validation) = (train.clone(), validation.clone());
        let opts = FinetuneOptions {
            device: device.clone(),
            ..opts.clone()
        };
        std::thread::Builder::new()
            .name(format!("rank {rank}"))
            // candle's backward walks the graph recursively; the main thread's 8 MiB, not 2.
            .stack_size(64 << 20)
            .spawn(move || {
                let outcome = group.join(rank, &device).and_then(|ranks| {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let net = load(&device)?;
                        let mut report = |r: &StepReport| {
                            if rank == 0 {
                                let _ = tx.send(Message::Step(*r));
                            }
                        };
                        Ok(finetune_rank(
                            net,
                            &train,
                            &validation,
                            &opts,
                            &*ranks,
                            &mut report,
                        )?)
                    }))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("a panic");
                        Err(anyhow::anyhow!("panicked: {what}"))
                    });
                    // Loading or training failed: the other ranks are not left waiting for this one.
                    if run.is_err() {
                        ranks.abort();
                    }
                    run
                });
                let outcome = outcome
                    .map(|net| (rank == 0).then(|| Box::new(net)))
                    .map_err(|e| format!("{e:#}"));
                let _ = tx.send(Message::Done(rank, outcome));
            })
            .context("starting a rank's thread")?;
    }
    drop(tx);
    let (mut lead, mut stopped) = (None, None);
    for message in rx {
        match message {
            Message::Step(r) => on_step(&r),
            Message::Done(_, Ok(net)) => lead = lead.or(net),
            // Stopped because another failed: that one's error says why.
            Message::Done(rank, Err(e)) if e.contains(cxr_train::ranks::ABORTED) => {
                stopped.get_or_insert(format!("rank {rank}: {e}"));
            }
            Message::Done(rank, Err(e)) => anyhow::bail!("rank {rank} of {world}: {e}"),
        }
    }
    match (lead, stopped) {
        (Some(net), None) => Ok(*net),
        (_, Some(e)) => anyhow::bail!(e),
        (None, None) => anyhow::bail!("rank 0 ended without a model"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_rank_that_panics_while_loading_ends_the_run_with_its_panic() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../cxr-lm/tests/fixtures/gpt_neox_tiny");
        let samples: Vec<Tokenized> = (0..4)
            .map(|k| Tokenized {
                task: cxr_instruct::Task::Text,
                source: format!("s{k}"),
                ids: (1..14).map(|i| (i * 7 + k) as u32).collect(),
                response_start: 4,
                prompt_spans: Vec::new(),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let opts = FinetuneOptions {
            steps: 2,
            micro_batch: 1,
            grad_accum: 2,
            out: dir.path().to_path_buf(),
            ..Default::default()
        };
        // The second model load panics: its rank never reaches a sum, and the first, waiting
        // for it there, is stopped instead of waiting forever.
        let loads = AtomicUsize::new(0);
        let load = move |device: &Device| -> anyhow::Result<Trainable> {
            if loads.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("out of memory, say");
            }
            Ok(Trainable::load(&fixture, device)?)
        };
        let err = finetune(
            2,
            DeviceSpec::Cpu,
            load,
            samples,
            Vec::new(),
            &opts,
            &mut |_| {},
        )
        .err()
        .expect("the run fails");
        let err = format!("{err:#}");
        assert!(err.contains("panicked: out of memory, say"), "{err}");
    }
}
