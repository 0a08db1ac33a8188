//! One worker thread owns the models; requests reach it through a bounded queue and leave as
//! events on a channel of their own. Jobs that wait together and share a mode (text or image)
//! and sampling settings run as one batch: batching at request granularity (a batch, once
//! started, takes no newcomers; each row ends on its own when it stops, hits its token limit, its
//! deadline passes or its client goes away).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use cxr_instruct::{prompt, Phrasings};
use cxr_lm::image_vocab::IMAGE_PLACEHOLDER;
use cxr_lm::{generate_until, Constraint, GenerateOptions, ImageVocab, LanguageModel, Sampling};
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
    pub batches: AtomicU64,
    pub batch_rows: AtomicU64,
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

    /// Queues a job unless `capacity` jobs are already waiting (the worker moves waiting jobs
    /// from the channel to its own list, so the count, not the channel, is the bound).
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
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            pending.push_back(job);
        }
        let first = pending.pop_front().expect("a job is pending");
        let mut batch = vec![first];
        let mut rest = VecDeque::new();
        while let Some(job) = pending.pop_front() {
            let same =
                job.task.draws() == batch[0].task.draws() && job.sampling == batch[0].sampling;
            if same && batch.len() < max_batch {
                batch.push(job);
            } else {
                rest.push_back(job);
            }
        }
        pending = rest;
        counters.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let now = Instant::now();
        let (live, late): (Vec<Job>, Vec<Job>) = batch
            .into_iter()
            .partition(|j| j.deadline > now && !j.events.is_closed());
        for job in late {
            if job.events.is_closed() {
                counters.cancelled.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(Event::TimedOut);
            }
        }
        if live.is_empty() {
            continue;
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .batch_rows
            .fetch_add(live.len() as u64, Ordering::Relaxed);
        let result = if live[0].task.draws() {
            engine.draw(&live, counters)
        } else {
            engine.answer(&live, counters)
        };
        if let Err(e) = result {
            tracing::error!("batch of {} failed: {e:#}", live.len());
            for job in &live {
                let _ = job.events.send(Event::Failed(format!("{e:#}")));
            }
        }
    }
}

/// How a row ended early, if it did.
fn interrupted(job: &Job, counters: &Counters) -> Option<Event> {
    if job.events.is_closed() {
        counters.cancelled.fetch_add(1, Ordering::Relaxed);
        None
    } else if Instant::now() >= job.deadline {
        counters.timed_out.fetch_add(1, Ordering::Relaxed);
        Some(Event::TimedOut)
    } else {
        None
    }
}

impl Engine {
    fn encode(&self, images: &[&Tensor]) -> anyhow::Result<Vec<Vec<u32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = Tensor::cat(images, 0)?;
        Ok(self.vqgan.encode(&x)?.to_vec2()?)
    }

    /// Text answers (report, ask, chat) as one batch, streamed.
    fn answer(&self, jobs: &[Job], counters: &Counters) -> anyhow::Result<()> {
        let images: Vec<&Tensor> = jobs
            .iter()
            .filter_map(|j| match &j.task {
                Task::Report { image } | Task::Ask { image, .. } => Some(image),
                _ => None,
            })
            .collect();
        let mut codes = self.encode(&images)?.into_iter();
        let tokenizer = &self.lm.tokenizer;
        let mut prompts = Vec::with_capacity(jobs.len());
        for job in jobs {
            let ids = match &job.task {
                Task::Report { .. } => {
                    let text = prompt(&self.phrasings.cxr_to_report[0], Some(IMAGE_PLACEHOLDER));
                    let c = codes.next().unwrap_or_default();
                    self.vocab.encode_with_image(tokenizer, &text, &c)?
                }
                Task::Ask { question, .. } => {
                    let text = prompt(question, Some(IMAGE_PLACEHOLDER));
                    let c = codes.next().unwrap_or_default();
                    self.vocab.encode_with_image(tokenizer, &text, &c)?
                }
                Task::Chat { prompt } => tokenizer.encode(prompt)?,
                Task::Draw { .. } => anyhow::bail!("a drawing in a text batch"),
            };
            prompts.push(ids);
        }
        let stop_ids = tokenizer.stop_ids();
        let options = GenerateOptions {
            sampling: jobs[0].sampling.clone(),
            constraint: Constraint::Text {
                image_ids: self.vocab.ids(),
            },
            max_new_tokens: jobs.iter().map(|j| j.max_tokens).max().unwrap_or(1),
            stop_ids: stop_ids.clone(),
        };
        let mut ids: Vec<Vec<u32>> = vec![Vec::new(); jobs.len()];
        let mut shown: Vec<String> = vec![String::new(); jobs.len()];
        let mut ended: Vec<Option<Event>> = (0..jobs.len()).map(|_| None).collect();
        let decode = |row: &[u32]| -> String {
            let text: Vec<u32> = row
                .iter()
                .copied()
                .filter(|i| !stop_ids.contains(i))
                .collect();
            tokenizer.decode(&text, true).unwrap_or_default()
        };
        generate_until(&self.lm.model, &prompts, &options, |row, id| {
            let job = &jobs[row];
            counters.generated_tokens.fetch_add(1, Ordering::Relaxed);
            ids[row].push(id);
            if !stop_ids.contains(&id) {
                let text = decode(&ids[row]);
                // Sent once it has grown past what was shown and ends in a whole character.
                if text.len() > shown[row].len()
                    && text.starts_with(shown[row].as_str())
                    && !text.ends_with('\u{FFFD}')
                {
                    let _ = job
                        .events
                        .send(Event::Delta(text[shown[row].len()..].to_string()));
                    shown[row] = text;
                }
            }
            if let Some(e) = interrupted(job, counters) {
                ended[row] = Some(e);
                return false;
            }
            !job.events.is_closed() && ids[row].len() < job.max_tokens
        })?;
        for (row, job) in jobs.iter().enumerate() {
            let text = decode(&ids[row]);
            // What was held back (a character cut between tokens) goes out last.
            if ended[row].is_none() && text.len() > shown[row].len() {
                if let Some(rest) = text.strip_prefix(shown[row].as_str()) {
                    let _ = job.events.send(Event::Delta(rest.to_string()));
                }
            }
            let event = match ended[row].take() {
                Some(e) => e,
                None => Event::Text {
                    text: text.trim().to_string(),
                    prompt_tokens: prompts[row].len(),
                    completion_tokens: ids[row].len(),
                    finish: if ids[row].last().is_some_and(|i| stop_ids.contains(i)) {
                        Finish::Stop
                    } else {
                        Finish::Length
                    },
                },
            };
            let _ = job.events.send(event);
        }
        Ok(())
    }

    /// Drawings as one batch: exactly one image's codes per row, decoded by the VQ-GAN.
    fn draw(&self, jobs: &[Job], counters: &Counters) -> anyhow::Result<()> {
        let config = self.vqgan.config();
        let (count, side) = (config.tokens_per_image(), config.grid_side());
        let prompts = jobs
            .iter()
            .map(|j| match &j.task {
                Task::Draw { report } => Ok(self
                    .lm
                    .tokenizer
                    .encode(&prompt(&self.phrasings.report_to_cxr[0], Some(report)))?),
                _ => anyhow::bail!("a text task in a drawing batch"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let options = GenerateOptions {
            sampling: jobs[0].sampling.clone(),
            constraint: Constraint::Image {
                image_ids: self.vocab.ids(),
                count,
            },
            max_new_tokens: count,
            stop_ids: Vec::new(),
        };
        let mut ended: Vec<Option<Event>> = (0..jobs.len()).map(|_| None).collect();
        let rows = generate_until(&self.lm.model, &prompts, &options, |row, _| {
            counters.generated_tokens.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = interrupted(&jobs[row], counters) {
                ended[row] = Some(e);
                return false;
            }
            !jobs[row].events.is_closed()
        })?;
        for ((job, row), end) in jobs.iter().zip(rows).zip(ended) {
            if let Some(e) = end {
                let _ = job.events.send(e);
                continue;
            }
            let codes: Vec<u32> = row.iter().filter_map(|&id| self.vocab.code(id)).collect();
            if codes.len() != count {
                // Cut short: the client went away.
                continue;
            }
            let idx = Tensor::from_vec(codes.clone(), (1, side * side), &Device::Cpu)?;
            let img = cxr_vqgan::to_gray_images(&self.vqgan.decode(&idx)?)?.remove(0);
            let mut png = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
            let _ = job.events.send(Event::Image { png, codes });
        }
        Ok(())
    }
}
