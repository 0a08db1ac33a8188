//! Generation, shared by the CLI, the server and evaluation: a batch of prompts (left-padded) runs
//! through the key/value cache; each step samples greedily or with temperature, top-k and top-p
//! (LLM-CXR's default: top_p 0.92, top_k 0, T 1); rows stop on a stop id (`### End`) or the token
//! limit. Two constrained modes: text (image ids can never be drawn) and image (only image ids, exactly
//! `count` of them, then stop: right the first time, where the reference resamples until it happens
//! to get 256). In image mode only the image rows of a float LM head are computed. [`Batch`] is
//! the running batch underneath: the server lets requests join it between steps (continuous
//! batching); [`generate`] joins all its prompts at once and steps until every row has ended.

use std::ops::Range;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::linear::Linear;
use crate::model::{Cache, CausalLm};
use crate::LmError;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f64,
    pub seed: u64,
}

impl Default for Sampling {
    /// LLM-CXR's `generate.py`: top_p 0.92, top_k 0, temperature 1.
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.92,
            seed: 42,
        }
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// What a generation may produce.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// Anything.
    Free,
    /// Text: the ids in `image_ids` are never drawn.
    Text { image_ids: Range<u32> },
    /// An image: exactly `count` ids from `image_ids`, then the row stops.
    Image { image_ids: Range<u32>, count: usize },
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub sampling: Sampling,
    pub constraint: Constraint,
    pub max_new_tokens: usize,
    /// A row stops after drawing one of these (the stop id is kept in its output).
    pub stop_ids: Vec<u32>,
}

/// Generates a continuation of each prompt; returns the new ids of each row (a stop id included).
/// `on_token(row, id)` sees every id as it is drawn (for streaming).
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>, LmError> {
    generate_until(model, prompts, options, |row, id| {
        on_token(row, id);
        true
    })
}

/// [`generate`], where `on_token(row, id)` returning false ends that row there (a client gone,
/// a deadline passed); the batch stops when every row has ended.
pub fn generate_until(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mut on_token: impl FnMut(usize, u32) -> bool,
) -> Result<Vec<Vec<u32>>, LmError> {
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    if prompts.is_empty() || limit_of(model, options)? == 0 {
        return Ok(outputs);
    }
    let mut batch = Batch::new(model);
    let mut drawn = batch.join(prompts, options)?;
    loop {
        let mut gone = Vec::new();
        for d in drawn {
            outputs[d.row].push(d.id);
            if !on_token(d.row, d.id) && !d.last {
                gone.push(d.row);
            }
        }
        batch.cancel(&gone)?;
        if batch.is_empty() {
            return Ok(outputs);
        }
        drawn = batch.step()?;
    }
}

/// How many ids a row may draw under `options`.
fn limit_of(model: &CausalLm, options: &GenerateOptions) -> Result<usize, LmError> {
    let vocab = model.vocab_size();
    Ok(match &options.constraint {
        Constraint::Image { count, image_ids } => {
            if image_ids.end as usize > vocab {
                return Err(LmError::Generate(format!(
                    "image ids {image_ids:?} exceed the model's vocabulary of {vocab}"
                )));
            }
            *count
        }
        _ => options.max_new_tokens,
    })
}

/// An id drawn for a row of a [`Batch`]; `last` when the row has ended with it (its stop id, its
/// token limit, its image's count) and has left the batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drawn {
    pub row: usize,
    pub id: u32,
    pub last: bool,
    /// The id is one of the row's stop ids (the row ended on it; `last` is set too).
    pub stopped: bool,
}

/// One sequence of a running [`Batch`].
struct Row {
    id: usize,
    /// Positions of left padding before the row's tokens in the batch's cache.
    pad: usize,
    /// The id drawn last, fed at the next step.
    last: u32,
    drawn: usize,
    limit: usize,
    rng: ChaCha8Rng,
    options: GenerateOptions,
}

/// A running batch (continuous batching): prompts join between steps, each prefilled on its own
/// and its keys and values stacked under the running rows' (right-aligned, the shorter side left
/// padded); a row leaves as soon as it ends or is cancelled, and the padding that every row then
/// shares is cut away. Each row keeps its own options and random stream, so what a row draws
/// does not depend on what else runs beside it.
pub struct Batch<'m> {
    model: &'m CausalLm,
    cache: Cache,
    rows: Vec<Row>,
    next_id: usize,
    /// The image rows of a float LM head, made once, for steps where every row draws an image.
    image_head: Option<(Range<u32>, Linear)>,
}

impl<'m> Batch<'m> {
    pub fn new(model: &'m CausalLm) -> Self {
        Batch {
            model,
            cache: model.new_cache(0),
            rows: Vec::new(),
            next_id: 0,
            image_head: None,
        }
    }

    /// Rows running.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Positions each row spans in the cache: the longest row's, since the padding that every
    /// row shares is cut away.
    pub fn width(&self) -> usize {
        self.cache.len()
    }

    /// Prefills `prompts` (one left-padded batch) and adds them as rows; returns the first id
    /// drawn for each, in order. Row ids count up from 0 over the batch's life; within one call,
    /// prompt `i` draws from random stream `i` of the options' seed.
    pub fn join(
        &mut self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
    ) -> Result<Vec<Drawn>, LmError> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(LmError::Generate(format!("prompt {i} is empty")));
        }
        let limit = limit_of(self.model, options)?;
        if limit == 0 {
            return Err(LmError::Generate("no tokens asked for".into()));
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let positions = self.model.config().max_position_embeddings();
        if longest + limit > positions {
            return Err(LmError::Generate(format!(
                "prompt ({longest} tokens) plus {limit} new tokens exceed the model's {positions} positions"
            )));
        }
        let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let mut flat = Vec::with_capacity(prompts.len() * longest);
        for (p, &n) in prompts.iter().zip(&pad) {
            flat.extend(std::iter::repeat_n(p[0], n));
            flat.extend_from_slice(p);
        }
        let ids = Tensor::from_vec(flat, (prompts.len(), longest), self.model.device())
            .map_err(candle)?;
        let mut fresh = self.model.new_cache(longest);
        let hidden = self
            .model
            .step_hidden(&ids, &pad, &mut fresh)
            .map_err(candle)?;
        let room = self
            .rows
            .iter()
            .map(|r| r.limit - r.drawn)
            .chain([limit])
            .max()
            .unwrap_or(limit);
        let (grown_running, grown_new) = self.cache.stack(&fresh, room).map_err(candle)?;
        let first = self.rows.len();
        for row in &mut self.rows {
            row.pad += grown_running;
        }
        for (stream, pad) in pad.into_iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(options.sampling.seed);
            rng.set_stream(stream as u64);
            self.rows.push(Row {
                id: self.next_id,
                pad: pad + grown_new,
                last: 0,
                drawn: 0,
                limit,
                rng,
                options: options.clone(),
            });
            self.next_id += 1;
        }
        let drawn = self.draw(&hidden, first)?;
        self.retire(&drawn)?;
        Ok(drawn)
    }

    /// Feeds every row its last id and draws the next.
    pub fn step(&mut self) -> Result<Vec<Drawn>, LmError> {
        if self.rows.is_empty() {
            return Ok(Vec::new());
        }
        let last: Vec<u32> = self.rows.iter().map(|r| r.last).collect();
        let pad: Vec<usize> = self.rows.iter().map(|r| r.pad).collect();
        let ids =
            Tensor::from_vec(last, (self.rows.len(), 1), self.model.device()).map_err(candle)?;
        let hidden = self
            .model
            .step_hidden(&ids, &pad, &mut self.cache)
            .map_err(candle)?;
        let drawn = self.draw(&hidden, 0)?;
        self.retire(&drawn)?;
        Ok(drawn)
    }

    /// Ends rows early (a client gone, a deadline passed); ids not running are ignored.
    pub fn cancel(&mut self, ids: &[usize]) -> Result<(), LmError> {
        if ids.is_empty() {
            return Ok(());
        }
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&i| !ids.contains(&self.rows[i].id))
            .collect();
        if keep.len() == self.rows.len() {
            return Ok(());
        }
        self.cache.keep_rows(&keep).map_err(candle)?;
        self.rows.retain(|r| !ids.contains(&r.id));
        let shared = self.rows.iter().map(|r| r.pad).min().unwrap_or(0);
        if shared > 0 {
            self.cache.drop_front(shared).map_err(candle)?;
            self.rows.iter_mut().for_each(|r| r.pad -= shared);
        }
        Ok(())
    }

    fn retire(&mut self, drawn: &[Drawn]) -> Result<(), LmError> {
        let ended: Vec<usize> = drawn.iter().filter(|d| d.last).map(|d| d.row).collect();
        self.cancel(&ended)
    }

    /// Draws the next id of rows `first..` from their final hidden states (one per row).
    fn draw(&mut self, hidden: &Tensor, first: usize) -> Result<Vec<Drawn>, LmError> {
        // When every row draws an image, only the image rows of a float head are computed.
        let all_images = match &self.rows[first].options.constraint {
            Constraint::Image { image_ids, .. } if !self.model.head().is_quantized() => {
                Some(image_ids.clone())
            }
            _ => None,
        }
        .filter(|ids| {
            self.rows[first..].iter().all(|r| {
                matches!(&r.options.constraint, Constraint::Image { image_ids, .. } if image_ids == ids)
            })
        });
        let (logits, offset) = match all_images {
            Some(ids) => {
                if self.image_head.as_ref().is_none_or(|(r, _)| *r != ids) {
                    let rows = ids.start as usize..ids.end as usize;
                    let head = self.model.head().outputs(rows).map_err(candle)?;
                    self.image_head = Some((ids.clone(), head));
                }
                let (_, head) = self
                    .image_head
                    .as_ref()
                    .expect("the image head was just made");
                (head.forward(hidden), ids.start)
            }
            None => (self.model.head().forward(hidden), 0),
        };
        let logits = logits.and_then(|l| l.to_vec2::<f32>()).map_err(candle)?;
        let mut drawn = Vec::with_capacity(logits.len());
        for (row, mut l) in self.rows[first..].iter_mut().zip(logits) {
            match &row.options.constraint {
                Constraint::Text { image_ids } => {
                    for id in image_ids.clone() {
                        if let Some(v) = l.get_mut((id - offset) as usize) {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
                Constraint::Image { image_ids, .. } if offset == 0 => {
                    for (id, v) in l.iter_mut().enumerate() {
                        if !image_ids.contains(&(id as u32)) {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
                _ => {}
            }
            let id = sample(&mut l, &row.options.sampling, &mut row.rng) as u32 + offset;
            row.drawn += 1;
            row.last = id;
            let image = matches!(row.options.constraint, Constraint::Image { .. });
            let stopped = !image && row.options.stop_ids.contains(&id);
            drawn.push(Drawn {
                row: row.id,
                id,
                last: stopped || row.drawn >= row.limit,
                stopped,
            });
        }
        Ok(drawn)
    }
}

fn candle(e: candle_core::Error) -> LmError {
    LmError::Candle(e.to_string())
}

/// Draws one index from `logits` (modified in place).
pub fn sample(logits: &mut [f32], sampling: &Sampling, rng: &mut impl Rng) -> usize {
    let argmax = || {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best
    };
    if sampling.temperature <= 0.0 {
        return argmax();
    }
    let t = sampling.temperature as f32;
    let mut order: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i] > f32::NEG_INFINITY)
        .collect();
    if order.is_empty() {
        return argmax();
    }
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if sampling.top_k > 0 {
        order.truncate(sampling.top_k);
    }
    let max = logits[order[0]] / t;
    let mut probs: Vec<f32> = order.iter().map(|&i| (logits[i] / t - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if sampling.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (n, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= sampling.top_p as f32 {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let mut u = rng.random::<f32>() * total;
    for (p, &i) in probs.iter().zip(&order) {
        if u < *p {
            return i;
        }
        u -= p;
    }
    order[order.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_maximum_and_top_k_1_equals_greedy() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let logits = vec![0.1, 2.0, -1.0, 1.9];
        assert_eq!(
            sample(&mut logits.clone(), &Sampling::greedy(), &mut rng),
            1
        );
        let s = Sampling {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 0,
        };
        for _ in 0..20 {
            assert_eq!(sample(&mut logits.clone(), &s, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_never_draws_outside_the_nucleus_and_follows_the_distribution() {
        // probabilities ~ 0.64, 0.24, 0.09, 0.03: top_p 0.8 keeps the first two.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            seed: 0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[sample(&mut logits.to_vec(), &s, &mut rng)] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let share = counts[0] as f64 / 4000.0;
        assert!((share - 0.7311).abs() < 0.03, "{share}"); // e^1 / (e^1 + 1)
    }

    #[test]
    fn masked_logits_are_never_drawn() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let s = Sampling {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        for _ in 0..200 {
            let mut l = vec![5.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
            let i = sample(&mut l, &s, &mut rng);
            assert!(i == 0 || i == 2);
        }
    }
}
