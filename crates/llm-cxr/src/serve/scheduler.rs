//! One worker thread owns the models; requests reach it through a bounded queue and leave as
//! events on a channel of their own. Continuous batching: between two steps of the running
//! batch, waiting jobs join it (up to `--batch` rows), whatever their task or sampling settings:
//! a report can start while a drawing is half done. Each row leaves on its own when it stops,
//! hits its token limit, its deadline passes or its client goes away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use cxr_instruct::{prompt, Phrasings};
use cxr_lm::image_vocab::IMAGE_PLACEHOLDER;
use cxr_lm::{
    Batch, Constraint, Drawn, GenerateOptions, ImageVocab, LanguageModel, Sampling, TextStream,
};
use cxr_vqgan::VqModel;
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

impl Task {
    fn draws(&self) -> bool {
        matches!(self, Task::Draw { .. })
    }
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
    Image {
        png: Vec<u8>,
        codes: Vec<u32>,
    },
    /// The deadline passed (in the queue or while generating).
    TimedOut,
    /// The request cannot run on this model (why, for the client).
    Rejected(String),
    Failed(String),
}

pub struct Job {
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
    pub fn start(engine: Engine, capacity: usize, max_batch: usize) -> Self {
        let (queue, rx) = std::sync::mpsc::sync_channel(capacity);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("llm-cxr-worker".into())
            .spawn(move || worker(engine, rx, max_batch.max(1), &c))
            .expect("spawning the model worker thread");
        Scheduler {
            queue,
            capacity,
            counters,
        }
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

/// The models a worker owns.
pub struct Engine {
    pub lm: LanguageModel,
    pub vocab: ImageVocab,
    pub vqgan: VqModel,
    pub phrasings: Phrasings,
}

fn worker(engine: Engine, rx: Receiver<Job>, max_batch: usize, counters: &Counters) {
    let mut batch = Batch::new(&engine.lm.model);
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
            if !interrupted(&job, counters) {
                engine.admit(job, &mut batch, &mut running, counters);
            }
        }
        if batch.is_empty() {
            continue;
        }
        counters.steps.fetch_add(1, Ordering::Relaxed);
        counters
            .step_rows
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let drawn = batch.step();
        if let Err(e) = drawn.and_then(|d| engine.deliver(d, &mut batch, &mut running, counters)) {
            tracing::error!("a batch of {} failed: {e:#}", running.len());
            for (_, r) in running.drain() {
                let _ = r.job.events.send(Event::Failed(format!("{e:#}")));
            }
            batch = Batch::new(&engine.lm.model);
            counters.running.store(0, Ordering::Relaxed);
        }
    }
}

/// A job the batch is running.
struct Running {
    job: Job,
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

impl Engine {
    /// The prompt's ids and the generation options of a job.
    fn prepare(&self, job: &Job) -> anyhow::Result<(Vec<u32>, GenerateOptions)> {
        let tokenizer = &self.lm.tokenizer;
        let with_image = |instruction: &str, image: &Tensor| -> anyhow::Result<Vec<u32>> {
            let codes: Vec<u32> = self.vqgan.encode(image)?.flatten_all()?.to_vec1()?;
            let text = prompt(instruction, Some(IMAGE_PLACEHOLDER));
            Ok(self.vocab.encode_with_image(tokenizer, &text, &codes)?)
        };
        let ids = match &job.task {
            Task::Report { image } => with_image(&self.phrasings.cxr_to_report[0], image)?,
            Task::Ask { image, question } => with_image(question, image)?,
            Task::Chat { prompt } => tokenizer.encode(prompt)?,
            Task::Draw { report } => tokenizer.encode(&cxr_instruct::template::drawing_prompt(
                &self.phrasings.report_to_cxr[0],
                report,
            ))?,
        };
        let options = if job.task.draws() {
            let count = self.vqgan.config().tokens_per_image();
            GenerateOptions {
                sampling: job.sampling.clone(),
                constraint: Constraint::Image {
                    image_ids: self.vocab.ids(),
                    count,
                },
                max_new_tokens: count,
                stop_ids: Vec::new(),
            }
        } else {
            GenerateOptions {
                sampling: job.sampling.clone(),
                constraint: Constraint::Text {
                    image_ids: self.vocab.ids(),
                },
                max_new_tokens: job.max_tokens,
                stop_ids: tokenizer.stop_ids(),
            }
        };
        Ok((ids, options))
    }

    /// Prefills a job's prompt into the running batch; a job that cannot start is told why.
    fn admit(
        &self,
        job: Job,
        batch: &mut Batch,
        running: &mut HashMap<usize, Running>,
        counters: &Counters,
    ) {
        let (ids, options) = match self.prepare(&job) {
            Ok(p) => p,
            Err(e) => {
                let _ = job.events.send(Event::Failed(format!("{e:#}")));
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
                let _ = job.events.send(Event::Failed(e.to_string()));
                return;
            }
        };
        let prompt_tokens = ids.len();
        counters.admitted.fetch_add(1, Ordering::Relaxed);
        running.insert(
            first[0].row,
            Running {
                job,
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
        let tokenizer = &self.lm.tokenizer;
        let mut gone = Vec::new();
        for d in drawn {
            counters.generated_tokens.fetch_add(1, Ordering::Relaxed);
            let Some(r) = running.get_mut(&d.row) else {
                continue;
            };
            r.ids.push(d.id);
            r.stopped = d.stopped;
            if !r.job.task.draws() && !d.stopped {
                if let Ok(Some(piece)) = r.text.push(tokenizer, d.id) {
                    let _ = r.job.events.send(Event::Delta(piece));
                }
            }
            if d.last {
                if let Some(r) = running.remove(&d.row) {
                    let events = r.job.events.clone();
                    let event = self
                        .answer(r)
                        .unwrap_or_else(|e| Event::Failed(format!("{e:#}")));
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
        if r.job.task.draws() {
            let config = self.vqgan.config();
            let side = config.grid_side();
            let codes: Vec<u32> = r.ids.iter().filter_map(|&id| self.vocab.code(id)).collect();
            anyhow::ensure!(
                codes.len() == side * side,
                "the model drew {} image codes, the VQ-GAN needs {}",
                codes.len(),
                side * side
            );
            let idx = Tensor::from_vec(codes.clone(), (1, side * side), &Device::Cpu)?;
            let img = cxr_vqgan::to_gray_images(&self.vqgan.decode(&idx)?)?.remove(0);
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
            return Ok(Event::Image { png, codes });
        }
        let (text, rest) = r.text.finish(&self.lm.tokenizer)?;
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
