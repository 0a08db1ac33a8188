//! Generation, shared by the CLI, the server and evaluation: a batch of prompts (left-padded) runs
//! through the key/value cache; each step samples greedily or with temperature, top-k and top-p
//! (LLM-CXR's default: top_p 0.92, top_k 0, T 1); rows stop on a stop id (`### End`) or the token
//! limit. Two constrained modes: text (image ids can never be drawn) and image (only image ids, exactly
//! `count` of them, then stop: right the first time, where the reference resamples until it happens
//! to get 256). In image mode only the image rows of a float LM head are computed.

use std::ops::Range;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::CausalLm;
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
    let err = |e: candle_core::Error| LmError::Candle(e.to_string());
    let device = Device::Cpu;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(LmError::Generate(format!("prompt {i} is empty")));
    }
    let vocab = model.vocab_size();
    let limit = match &options.constraint {
        Constraint::Image { count, image_ids } => {
            if image_ids.end as usize > vocab {
                return Err(LmError::Generate(format!(
                    "image ids {image_ids:?} exceed the model's vocabulary of {vocab}"
                )));
            }
            *count
        }
        _ => options.max_new_tokens,
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let capacity = longest + limit;
    if capacity > model.config().max_position_embeddings() {
        return Err(LmError::Generate(format!(
            "prompt ({longest} tokens) plus {limit} new tokens exceed the model's {} positions",
            model.config().max_position_embeddings()
        )));
    }
    let batch = prompts.len();
    let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut flat = Vec::with_capacity(batch * longest);
    for (p, &n) in prompts.iter().zip(&pad) {
        flat.extend(std::iter::repeat_n(p[0], n));
        flat.extend_from_slice(p);
    }
    let ids = Tensor::from_vec(flat, (batch, longest), &device).map_err(err)?;

    // In image mode only the image rows of the head matter.
    let (head, offset) = match &options.constraint {
        Constraint::Image { image_ids, .. } if !model.head().is_quantized() => {
            let rows = image_ids.start as usize..image_ids.end as usize;
            (model.head().outputs(rows).map_err(err)?, image_ids.start)
        }
        _ => (model.head().clone(), 0),
    };

    let mut rngs: Vec<ChaCha8Rng> = (0..batch)
        .map(|row| {
            let mut r = ChaCha8Rng::seed_from_u64(options.sampling.seed);
            r.set_stream(row as u64);
            r
        })
        .collect();
    let mut cache = model.new_cache(capacity);
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); batch];
    let mut done = vec![false; batch];
    let mut input = ids;
    for _ in 0..limit {
        let hidden = model.step_hidden(&input, &pad, &mut cache).map_err(err)?;
        let logits = head
            .forward(&hidden)
            .map_err(err)?
            .to_vec2::<f32>()
            .map_err(err)?;
        let mut next = Vec::with_capacity(batch);
        for (row, mut l) in logits.into_iter().enumerate() {
            if done[row] {
                next.push(outputs[row].last().copied().unwrap_or(0));
                continue;
            }
            if let Constraint::Text { image_ids } = &options.constraint {
                for id in image_ids.clone() {
                    if let Some(v) = l.get_mut((id - offset) as usize) {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            if let Constraint::Image { image_ids, .. } = &options.constraint {
                if offset == 0 {
                    for (id, v) in l.iter_mut().enumerate() {
                        if !image_ids.contains(&(id as u32)) {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            let id = sample(&mut l, &options.sampling, &mut rngs[row]) as u32 + offset;
            outputs[row].push(id);
            let keep = on_token(row, id);
            let is_image = matches!(options.constraint, Constraint::Image { .. });
            if !keep || (!is_image && options.stop_ids.contains(&id)) || outputs[row].len() >= limit
            {
                done[row] = true;
            }
            next.push(id);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        input = Tensor::from_vec(next, (batch, 1), &device).map_err(err)?;
    }
    Ok(outputs)
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
