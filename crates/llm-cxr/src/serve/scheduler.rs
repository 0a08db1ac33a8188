//! One worker thread owns the models; requests reach it through a bounded queue and leave as
//! events on a channel of their own. Continuous batching: between two steps of the running
//! batch, waiting jobs join it (up to `--batch` rows), whatever their task or sampling settings:
//! a report can start while a drawing is half done. Each row leaves on its own when it stops,
//! hits its token limit, its deadline passes or its client goes away.
//!
//! Each stage of a batch (a newcomer's encode and prefill, a step, the answers it ends) runs under
//! `catch_unwind`: a panic fails the rows of that batch (answered 500 with their request ids, the
//! detail in the log), the batch starts afresh and the worker goes on with the queue. `Health`
//! says whether the worker can serve: it is gone, or its last batches all failed.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use cxr_instruct::engine::{png_bytes, Engine, Request};
use cxr_lm::{Batch, Drawn, GenerateOptions, Sampling, TextStream};
use tokio::sync::mpsc::UnboundedSender;

/// What a client asked for.
pub enum Task {
    /// CXR -> report; the image as the VQ-GAN's input (1, C, H, W).
    Report { image: Tensor },
    /// A question about a CXR.
    Ask { image: Tensor, question: String },
    /// Report -> CXR.
    Draw { report: String },
    /// A plain instruction, already rendered in the model's template.
    Chat { prompt: String },
}

/// Why a text ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Finish {
    /// The model wrote `### End` (or its own end token).
    Stop,
    /// The request's token limit.
    Length,
}

/// What the worker tells the request's handler.
#[derive(Debug)]
pub enum Event {
    /// New text of a streamed answer.
    Delta(String),
    /// A text answer, whole.
    Text {
        text: String,
        prompt_tokens: usize,
        completion_tokens: usize,
        finish: Finish,
    },
    /// A drawn CXR: PNG bytes and the image codes (row-major grid).
    Image { png: Vec<u8>, codes: Vec<u32> },
    /// The deadline passed (in the queue or while generating).
    TimedOut,
    /// The request cannot run on this model (why, for the client).
    Rejected(String),
    /// The model failed on this request (the detail is in the log, under its request id).
    Failed,
}

pub struct Job {
    /// Names the request in the log and in its answer.
    pub request_id: String,
    pub task: Task,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
}

/// Counters the server exports at /metrics.
#[derive(Default)]
pub struct Counters {
    pub queued: AtomicUsize,
    /// Jobs that joined the running batch.
    pub admitted: AtomicU64,
    /// Steps of the running batch, and the rows they ran (rows per step = their ratio).
    pub steps: AtomicU64,
    pub step_rows: AtomicU64,
    /// Rows in the running batch now.
    pub running: AtomicUsize,
    pub generated_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    pub timed_out: AtomicU64,
    /// Batches that failed (a panic or an error), and how many in a row up to now.
    pub failed_batches: AtomicU64,
    pub failing_in_a_row: AtomicUsize,
    /// False once the worker thread has ended.
    pub worker_alive: AtomicBool,
}

/// After this many failed batches in a row (with no success between) `/health` says degraded.
pub const DEGRADED_AFTER_FAILURES: usize = 3;

impl Counters {
    /// Why the worker cannot serve now, if it cannot.
    pub fn degraded(&self) -> Option<String> {
        if !self.worker_alive.load(Ordering::Relaxed) {
            return Some("the model worker has stopped".into());
        }
        let failing = self.failing_in_a_row.load(Ordering::Relaxed);
        (failing >= DEGRADED_AFTER_FAILURES)
            .then(|| format!("the model failed its last {failing} batches"))
    }
}

/// A fault the worker injects into itself, for the tests of its panic guard: set by the
/// environment variable `LLM_CXR_FAULT_INJECT` at start (`panic-once`: the next batch step
/// panics; `panic-always`: every step does), never reachable from HTTP.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    PanicOnce,
    PanicAlways,
}

impl Fault {
    fn from_env() -> Fault {
        match std::env::var("LLM_CXR_FAULT_INJECT").as_deref() {
            Ok("panic-once") => Fault::PanicOnce,
            Ok("panic-always") => Fault::PanicAlways,
            _ => Fault::None,
        }
    }

    /// Panics where a fault is due.
    fn strike(&mut self) {
        match *self {
            Fault::None => {}
            Fault::PanicOnce => {
                *self = Fault::None;
                panic!("fault injected by LLM_CXR_FAULT_INJECT=panic-once");
            }
            Fault::PanicAlways => panic!("fault injected by LLM_CXR_FAULT_INJECT=panic-always"),
        }
    }
}

/// The handle requests use.
#[derive(Clone)]
pub struct Scheduler {
    queue: SyncSender<Job>,
    capacity: usize,
    pub counters: Arc<Counters>,
}

/// Why a job was not queued.
pub enum Refused {
    Full,
    Stopped,
}

impl Scheduler {
    /// Starts the worker thread with room for `capacity` waiting jobs.
    pub fn start(serving: Serving, capacity: usize, max_batch: usize) -> std::io::Result<Self> {
        let (queue, rx) = std::sync::mpsc::sync_channel(capacity);
        let counters = Arc::new(Counters {
            worker_alive: AtomicBool::new(true),
            ..Default::default()
        });
        let c = counters.clone();
        let fault = Fault::from_env();
        if fault != Fault::None {
            tracing::warn!(
                "test hook: LLM_CXR_FAULT_INJECT makes the model worker panic ({fault:?})"
            );
        }
        std::thread::Builder::new()
            .name("llm-cxr-worker".into())
            .spawn(move || {
                // Whatever ends the thread (the queue closing, a panic outside the guards),
                // /health learns of it.
                let _alive = Alive(&c);
                worker(serving, rx, max_batch.max(1), &c, fault)
            })?;
        Ok(Scheduler {
            queue,
            capacity,
            counters,
        })
    }

    /// Whether the queue has room now (a hint: it may fill before the job is submitted).
    pub fn has_room(&self) -> bool {
        self.counters.queued.load(Ordering::Relaxed) < self.capacity
    }

    /// Queues a job unless `capacity` jobs are already waiting.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        if self.counters.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        self.queue.try_send(job).map_err(|e| {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => Refused::Full,
                TrySendError::Disconnected(_) => Refused::Stopped,
            }
        })
    }
}

/// What a worker owns: the engine, and the longest prompt it prefills.
pub struct Serving {
    pub engine: Engine,
    /// The longest prompt prefilled (`--max-prompt-tokens`); longer ones are refused before.
    pub max_prompt_tokens: usize,
}

/// A job's request and prompt, ready to join the batch, or why it may not.
enum Prepared {
    Ready(Request, Vec<u32>, GenerateOptions),
    TooLong(String),
}

/// What a client is told of a prompt over the limit (the handlers say the same).
pub fn prompt_too_long(tokens: usize, limit: usize, positions: usize) -> String {
    format!(
        "the prompt has {tokens} tokens, more than this server's limit of {limit} \
         (--max-prompt-tokens; the model has {positions} positions)"
    )
}

/// Marks the worker gone when dropped (also while unwinding).
struct Alive<'a>(&'a Counters);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.worker_alive.store(false, Ordering::Relaxed);
    }
}

/// The text of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Ends a failed batch: every running row (and `also`, a job that was joining) is answered
/// `Failed`, the detail is logged under their request ids, and the batch starts empty.
fn fail_batch<'a>(
    serving: &'a Serving,
    batch: &mut Batch<'a>,
    running: &mut HashMap<usize, Running>,
    also: Option<(String, UnboundedSender<Event>)>,
    counters: &Counters,
    what: &str,
) {
    // Counted before anyone is answered: a client that reads /health after its 500 sees it.
    counters.failed_batches.fetch_add(1, Ordering::Relaxed);
    counters.failing_in_a_row.fetch_add(1, Ordering::Relaxed);
    let mut ids: Vec<String> = Vec::new();
    for (_, r) in running.drain() {
        ids.push(r.job.request_id.clone());
        let _ = r.job.events.send(Event::Failed);
    }
    if let Some((id, events)) = also {
        ids.push(id);
        let _ = events.send(Event::Failed);
    }
    tracing::error!(
        "a batch failed ({what}); requests {} answered 500",
        ids.join(", ")
    );
    *batch = Batch::new(&serving.engine.lm.model);
    counters.running.store(0, Ordering::Relaxed);
}

fn worker(
    serving: Serving,
    rx: Receiver<Job>,
    max_batch: usize,
    counters: &Counters,
    mut fault: Fault,
) {
    let mut batch = Batch::new(&serving.engine.lm.model);
    let mut running: HashMap<usize, Running> = HashMap::new();
    loop {
        // Waiting jobs join between steps while there is room; an idle worker sleeps on the queue.
        while batch.len() < max_batch {
            let job = if batch.is_empty() {
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            counters.queued.fetch_sub(1, Ordering::Relaxed);
            if interrupted(&job, counters) {
                continue;
            }
            let joining = (job.request_id.clone(), job.events.clone());
            // Encode and prefill: a panic here fails the joining job and the running rows (the
            // batch may be half joined).
            let admitted = catch_unwind(AssertUnwindSafe(|| {
                serving.admit(job, &mut batch, &mut running, counters)
            }));
            if let Err(panic) = admitted {
                let what = format!("panic while joining: {}", panic_text(&*panic));
                fail_batch(
                    &serving,
                    &mut batch,
                    &mut running,
                    Some(joining),
                    counters,
                    &what,
                );
            }
        }
        if batch.is_empty() {
            continue;
        }
        counters.steps.fetch_add(1, Ordering::Relaxed);
        counters
            .step_rows
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // One step and the answers it ends (decoding a drawing included).
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            fault.strike();
            let drawn = batch.step()?;
            serving.deliver(drawn, &mut batch, &mut running, counters)
        }));
        let what = match stepped {
            Ok(Ok(())) => {
                counters.failing_in_a_row.store(0, Ordering::Relaxed);
                continue;
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(panic) => format!("panic: {}", panic_text(&*panic)),
        };
        fail_batch(&serving, &mut batch, &mut running, None, counters, &what);
    }
}

/// A job the batch is running.
struct Running {
    job: Job,
    request: Request,
    prompt_tokens: usize,
    /// Every id drawn, a stop id included.
    ids: Vec<u32>,
    /// The row ended on a stop id (not at its token limit).
    stopped: bool,
    /// The text ids, for streaming.
    text: TextStream,
}

/// Whether a job must end now: its client went away (counted) or its deadline passed (counted,
/// and the client told).
fn interrupted(job: &Job, counters: &Counters) -> bool {
    if job.events.is_closed() {
        counters.cancelled.fetch_add(1, Ordering::Relaxed);
        true
    } else if Instant::now() >= job.deadline {
        counters.timed_out.fetch_add(1, Ordering::Relaxed);
        let _ = job.events.send(Event::TimedOut);
        true
    } else {
        false
    }
}

impl Serving {
    /// The engine's request for a job (its image encoded), its prompt's ids and generation
    /// options.
    fn prepare(&self, job: &Job) -> anyhow::Result<Prepared> {
        let engine = &self.engine;
        let codes = |image: &Tensor| -> anyhow::Result<Vec<u32>> {
            Ok(engine.encode_images(image)?.remove(0))
        };
        let request = match &job.task {
            Task::Report { image } => Request::Report {
                codes: codes(image)?,
                instruction: None,
            },
            Task::Ask { image, question } => Request::Ask {
                codes: codes(image)?,
                question: question.clone(),
            },
            Task::Draw { report } => Request::Draw {
                report: report.clone(),
                instruction: None,
            },
            Task::Chat { prompt } => Request::Chat {
                prompt: prompt.clone(),
            },
        };
        let (ids, options) = engine.prepare(&request, job.sampling.clone(), job.max_tokens)?;
        if ids.len() > self.max_prompt_tokens {
            return Ok(Prepared::TooLong(prompt_too_long(
                ids.len(),
                self.max_prompt_tokens,
                engine.lm.model.config().max_position_embeddings(),
            )));
        }
        Ok(Prepared::Ready(request, ids, options))
    }

    /// Prefills a job's prompt into the running batch; a job that cannot start is told why.
    fn admit(
        &self,
        job: Job,
        batch: &mut Batch,
        running: &mut HashMap<usize, Running>,
        counters: &Counters,
    ) {
        let (request, ids, options) = match self.prepare(&job) {
            Ok(Prepared::Ready(request, ids, options)) => (request, ids, options),
            Ok(Prepared::TooLong(reason)) => {
                let _ = job.events.send(Event::Rejected(reason));
                return;
            }
            Err(e) => {
                tracing::error!(
                    "request {}: preparing the prompt failed: {e:#}",
                    job.request_id
                );
                let _ = job.events.send(Event::Failed);
                return;
            }
        };
        let first = match batch.join(std::slice::from_ref(&ids), &options) {
            Ok(first) => first,
            Err(cxr_lm::LmError::Generate(reason)) => {
                // The request does not fit the model (a prompt longer than its positions).
                let _ = job.events.send(Event::Rejected(reason));
                return;
            }
            Err(e) => {
                tracing::error!("request {}: prefill failed: {e:#}", job.request_id);
                let _ = job.events.send(Event::Failed);
                return;
            }
        };
        let prompt_tokens = ids.len();
        counters.admitted.fetch_add(1, Ordering::Relaxed);
        running.insert(
            first[0].row,
            Running {
                job,
                request,
                prompt_tokens,
                ids: Vec::new(),
                stopped: false,
                text: TextStream::new(),
            },
        );
        if let Err(e) = self.deliver(first, batch, running, counters) {
            tracing::error!("starting a job failed: {e:#}");
        }
    }

    /// Hands each drawn id to its job: streamed text, and the whole answer once the row ends;
    /// rows whose client went away or whose deadline passed leave the batch.
    fn deliver(
        &self,
        drawn: Vec<Drawn>,
        batch: &mut Batch,
        running: &mut HashMap<usize, Running>,
        counters: &Counters,
    ) -> Result<(), cxr_lm::LmError> {
        // The rows that ended with these ids have already left the batch: the gauge says so
        // before their answers go out.
        counters.running.store(batch.len(), Ordering::Relaxed);
        let tokenizer = &self.engine.lm.tokenizer;
        let mut gone = Vec::new();
        for d in drawn {
            counters.generated_tokens.fetch_add(1, Ordering::Relaxed);
            let Some(r) = running.get_mut(&d.row) else {
                continue;
            };
            r.ids.push(d.id);
            r.stopped = d.stopped;
            if !r.request.draws() && !d.stopped {
                if let Ok(Some(piece)) = r.text.push(tokenizer, d.id) {
                    let _ = r.job.events.send(Event::Delta(piece));
                }
            }
            if d.last {
                if let Some(r) = running.remove(&d.row) {
                    let events = r.job.events.clone();
                    let id = r.job.request_id.clone();
                    let event = self.answer(r).unwrap_or_else(|e| {
                        tracing::error!("request {id}: the answer failed: {e:#}");
                        Event::Failed
                    });
                    let _ = events.send(event);
                }
            } else if interrupted(&r.job, counters) {
                running.remove(&d.row);
                gone.push(d.row);
            }
        }
        batch.cancel(&gone)?;
        counters.running.store(batch.len(), Ordering::Relaxed);
        Ok(())
    }

    /// The answer of a row that has ended: its text, or its drawing decoded by the VQ-GAN.
    fn answer(&self, r: Running) -> anyhow::Result<Event> {
        if r.request.draws() {
            let (codes, image) = self.engine.draw(&r.ids)?;
            return Ok(Event::Image {
                png: png_bytes(&image)?,
                codes,
            });
        }
        let (text, rest) = r.text.finish(&self.engine.lm.tokenizer)?;
        if let Some(rest) = rest {
            // What was held back (a character cut between ids) goes out last.
            let _ = r.job.events.send(Event::Delta(rest));
        }
        Ok(Event::Text {
            text: text.trim().to_string(),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.ids.len(),
            finish: if r.stopped {
                Finish::Stop
            } else {
                Finish::Length
            },
        })
    }
}
