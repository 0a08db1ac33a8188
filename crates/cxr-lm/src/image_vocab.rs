//! LLM-CXR's image vocabulary (brief section 1; `training/trainer.py:load_tokenizer` and
//! `get_inject_vq_fun` of the reference): the instruction keys are special tokens, `### Response:\n`
//! is added when absent, and VQ code k becomes id `base + k` with `base` the tokenizer's length after
//! that (50281 for dolly-v2-3b). The ids are not tokenizer entries; only the model's embedding and
//! head grow. In a prompt, the `image` token of `<image>` is replaced by the image's ids.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Tensor};
use rand::SeedableRng;

use crate::config::LmConfig;
use crate::tokenizer::TextTokenizer;
use crate::weights::Weight;
use crate::LmError;

pub const INTRO: &str =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
pub const INSTRUCTION_KEY: &str = "### Instruction:";
pub const RESPONSE_KEY: &str = "### Response:";
pub const RESPONSE_KEY_NL: &str = "### Response:\n";
pub const END_KEY: &str = "### End";
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// Where the image codes sit in the vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageVocab {
    /// Id of code 0.
    pub base: u32,
    /// Number of codes (the VQ-GAN's `n_embed`).
    pub codes: u32,
}

impl ImageVocab {
    /// Adds LLM-CXR's keys to `tokenizer` (existing ones keep their ids) and places `codes` image
    /// ids after it.
    pub fn extend(tokenizer: &mut TextTokenizer, codes: u32) -> Result<Self, LmError> {
        for key in [END_KEY, INSTRUCTION_KEY, RESPONSE_KEY_NL] {
            tokenizer.add_special_token(key)?;
        }
        Ok(ImageVocab {
            base: tokenizer.len() as u32,
            codes,
        })
    }

    /// The subword ids of LLM-CXR's keys in `tokenizer` before [`ImageVocab::extend`] makes
    /// them tokens: what [`NewRows::keys`] starts their rows from (pair with the ids after).
    pub fn key_pieces(tokenizer: &TextTokenizer) -> Result<Vec<(&'static str, Vec<u32>)>, LmError> {
        [END_KEY, INSTRUCTION_KEY, RESPONSE_KEY_NL]
            .into_iter()
            .map(|k| Ok((k, tokenizer.encode_plain(k)?)))
            .collect()
    }

    pub fn ids(&self) -> Range<u32> {
        self.base..self.base + self.codes
    }

    /// The model's vocabulary size once the image ids are added.
    pub fn vocab_size(&self) -> usize {
        (self.base + self.codes) as usize
    }

    pub fn id(&self, code: u32) -> u32 {
        self.base + code
    }

    pub fn code(&self, id: u32) -> Option<u32> {
        self.ids().contains(&id).then(|| id - self.base)
    }

    /// Tokenizes `text` and replaces the `image` token inside each `<image>` with `codes` (the
    /// reference's injection: `<` and `>` stay).
    pub fn encode_with_image(
        &self,
        tokenizer: &TextTokenizer,
        text: &str,
        codes: &[u32],
    ) -> Result<Vec<u32>, LmError> {
        let enc = tokenizer.encoding(text)?;
        let spans: Vec<usize> = text
            .match_indices(IMAGE_PLACEHOLDER)
            .map(|(i, _)| i)
            .collect();
        let mut out = Vec::with_capacity(enc.len() + codes.len() * spans.len());
        let inner = |s: usize| s + 1..s + IMAGE_PLACEHOLDER.len() - 1;
        let mut replaced = vec![false; spans.len()];
        for (id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            match spans
                .iter()
                .position(|&s| start >= inner(s).start && end <= inner(s).end && end > start)
            {
                Some(k) => {
                    if !replaced[k] {
                        out.extend(codes.iter().map(|&c| self.id(c)));
                        replaced[k] = true;
                    }
                }
                None => out.push(*id),
            }
        }
        if let Some(k) = replaced.iter().position(|r| !r) {
            return Err(LmError::Tokenizer {
                origin: format!("prompt at byte {}", spans[k]),
                reason: "`<image>` was not tokenized as `<`, `image`, `>`, so the image cannot be placed".into(),
            });
        }
        Ok(out)
    }
}

/// How the image codes' new rows start.
#[derive(Debug, Clone)]
pub enum ImageInit {
    /// Each code's VQ-GAN codebook vector (`codes x embed_dim`), centred, mapped to the hidden
    /// size by a fixed random orthogonal projection, scaled to the spread of the text rows and
    /// placed around their mean: codes that look alike start alike, every code differs from the
    /// others as much as text rows do, and their logits start among the text's.
    Codebook(Tensor),
    /// N(0, 0.02²), as transformers 4.28's `resize_token_embeddings` (LLM-CXR's).
    Normal,
    /// The mean of the text rows plus noise of 1 % of their spread (transformers'
    /// `mean_resizing`): nearly one vector for every code, which the model can hardly tell
    /// apart (mean pairwise cosine 0.9999 on SmolLM2); llm-cxr's start before 2026-11-30, kept
    /// for comparison (the noise is not the same draw as then).
    Mean,
}

/// The starting values of the rows a vocabulary grows by.
#[derive(Debug, Clone)]
pub struct NewRows {
    /// Added text keys (`### End`, ...): each key's id and the ids of the subwords its text had
    /// before it became one token; its row starts as their mean, so the model reads (and, with
    /// a tied head, writes) the key as the text it stands for from the first step.
    pub keys: Vec<(u32, Vec<u32>)>,
    /// Id of image code 0; rows from here on are image codes.
    pub image_base: u32,
    pub image: ImageInit,
    pub seed: u64,
}

/// Names of a model's input embedding table and LM head (the head absent when tied).
pub fn vocab_tables(config: &LmConfig) -> [&'static str; 2] {
    match config {
        LmConfig::GptNeox(_) => ["gpt_neox.embed_in.weight", "embed_out.weight"],
        LmConfig::Llama(_) => ["model.embed_tokens.weight", "lm_head.weight"],
    }
}

/// Gives a model whose head is its embedding table (SmolLM2) a head of its own, a copy of the
/// table. With a tied head an image row is both what the model reads for a code and what it
/// scores the code with: report -> CXR's large output gradients then swamp the reading ones
/// (measured: 8 images memorized in both directions for 48 steps gave one report for all of
/// them; untied, see docs/instruction-tuning.md). Returns whether it untied anything.
pub fn untie_head(
    tensors: &mut HashMap<String, Weight>,
    config: &mut LmConfig,
) -> Result<bool, LmError> {
    let [embed, head] = vocab_tables(config);
    let tied = match config {
        LmConfig::GptNeox(c) => &mut c.tie_word_embeddings,
        LmConfig::Llama(c) => &mut c.tie_word_embeddings,
    };
    if tensors.contains_key(head) {
        *tied = false;
        return Ok(false);
    }
    let table = match tensors.get(embed) {
        Some(Weight::Float(t)) => t.clone(),
        Some(Weight::Quantized(q)) => q
            .dequantize(&q.device())
            .map_err(|e| LmError::Candle(format!("{embed}: {e}")))?,
        None => return Ok(false),
    };
    let copy = table
        .copy()
        .map_err(|e| LmError::Candle(format!("{embed}: {e}")))?;
    tensors.insert(head.to_string(), Weight::Float(copy));
    *tied = false;
    Ok(true)
}

/// Grows the embedding table and the LM head of a checkpoint to `vocab` rows (a model that
/// already has more, such as pythia's padded 50304, keeps its size and its rows), starting the
/// new rows as `init` says. Quantized tables are dequantized first.
pub fn resize_vocab(
    tensors: &mut HashMap<String, Weight>,
    config: &mut LmConfig,
    vocab: usize,
    init: &NewRows,
) -> Result<(), LmError> {
    let vocab = vocab.max(config.vocab_size());
    let [embed, _] = vocab_tables(config);
    for name in vocab_tables(config) {
        let Some(w) = tensors.get(name) else {
            continue;
        };
        let err = |e: candle_core::Error| LmError::Candle(format!("{name}: {e}"));
        let table = match w {
            Weight::Float(t) => t.to_dtype(DType::F32).map_err(err)?,
            Weight::Quantized(q) => q.dequantize(&q.device()).map_err(err)?,
        };
        let (rows, dim) = table.dims2().map_err(err)?;
        if rows >= vocab {
            continue;
        }
        // A separate head scores codes from the codebook's start alike: with distinct rows a
        // code's logit is h · row, and the hidden state's large norm spreads the codes' first
        // log-probabilities over tens of nats (a report -> CXR loss of 19 at the first step
        // against log 512 = 6.2 for equal rows).
        let head_init;
        let init = match (&init.image, name == embed) {
            (ImageInit::Codebook(_), false) => {
                head_init = NewRows {
                    image: ImageInit::Mean,
                    ..init.clone()
                };
                &head_init
            }
            _ => init,
        };
        let new_rows = new_rows(&table, rows, vocab, init).map_err(err)?;
        let grown = Tensor::cat(&[&table, &new_rows], 0).map_err(err)?;
        debug_assert_eq!(grown.dims2().ok(), Some((vocab, dim)));
        tensors.insert(name.to_string(), Weight::Float(grown));
    }
    config.set_vocab_size(vocab);
    Ok(())
}

/// Rows `rows..vocab` of a grown `table` (f32, `rows x dim`).
fn new_rows(
    table: &Tensor,
    rows: usize,
    vocab: usize,
    init: &NewRows,
) -> candle_core::Result<Tensor> {
    let dim = table.dim(1)?;
    let old: Vec<Vec<f32>> = table.to_vec2()?;
    let mean: Vec<f32> = (0..dim)
        .map(|j| (old.iter().map(|r| r[j] as f64).sum::<f64>() / rows as f64) as f32)
        .collect();
    let spread = (old
        .iter()
        .flat_map(|r| r.iter().zip(&mean).map(|(x, m)| ((x - m) as f64).powi(2)))
        .sum::<f64>()
        / (rows * dim) as f64)
        .sqrt() as f32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(init.seed);
    let mut out = vec![vec![0f32; dim]; vocab - rows];
    let image_base = (init.image_base as usize).max(rows);
    // Rows before the image codes (added keys and anything else) start as the mean row unless
    // their text says better.
    for (i, row) in out
        .iter_mut()
        .enumerate()
        .take(image_base.saturating_sub(rows))
    {
        let id = (rows + i) as u32;
        let pieces: Vec<usize> = init
            .keys
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, p)| {
                p.iter()
                    .map(|&p| p as usize)
                    .filter(|&p| p < rows)
                    .collect()
            })
            .unwrap_or_default();
        *row = if pieces.is_empty() {
            mean.clone()
        } else {
            (0..dim)
                .map(|j| pieces.iter().map(|&p| old[p][j]).sum::<f32>() / pieces.len() as f32)
                .collect()
        };
    }
    let image = &mut out[image_base.min(vocab) - rows..];
    match &init.image {
        ImageInit::Mean => {
            for row in image.iter_mut() {
                for (x, m) in row.iter_mut().zip(&mean) {
                    *x = m + cxr_train::sample_normal(&mut rng, 0.0, 0.01 * spread);
                }
            }
        }
        ImageInit::Normal => {
            for x in image.iter_mut().flatten() {
                *x = cxr_train::sample_normal(&mut rng, 0.0, 0.02);
            }
        }
        ImageInit::Codebook(codebook) => {
            let codebook: Vec<Vec<f32>> = codebook.to_dtype(DType::F32)?.to_vec2()?;
            if codebook.len() + (init.image_base as usize) < vocab {
                candle_core::bail!(
                    "the codebook has {} codes, the vocabulary {} image rows",
                    codebook.len(),
                    vocab - init.image_base as usize
                );
            }
            let e = codebook.first().map_or(0, Vec::len);
            if e == 0 || e > dim {
                candle_core::bail!("codebook vectors of {e} values cannot map to {dim}");
            }
            let projection = orthonormal_columns(dim, e, &mut rng);
            let n = image.len();
            // A table padded past the image base (pythia's 50304 rows) already holds the first
            // codes' rows: the new rows are the codes from `skip` on.
            let skip = image_base - init.image_base as usize;
            let codebook = &codebook[skip..skip + n];
            let c_mean: Vec<f32> = (0..e)
                .map(|j| codebook.iter().map(|c| c[j]).sum::<f32>() / n as f32)
                .collect();
            for (row, c) in image.iter_mut().zip(codebook) {
                for (i, x) in row.iter_mut().enumerate() {
                    *x = (0..e).map(|j| projection[i][j] * (c[j] - c_mean[j])).sum();
                }
            }
            // Scale to the text rows' spread per value, around their mean: among the text rows,
            // so that their logits start where the text's are (a tied head gives a row's logit
            // as h · row), yet each its own direction.
            let rms = (image
                .iter()
                .flatten()
                .map(|x| (*x as f64).powi(2))
                .sum::<f64>()
                / (n * dim) as f64)
                .sqrt() as f32;
            let scale = if rms > 0.0 { spread / rms } else { 0.0 };
            for row in image.iter_mut() {
                for (x, m) in row.iter_mut().zip(&mean) {
                    *x = m + *x * scale;
                }
            }
        }
    }
    let flat: Vec<f32> = out.into_iter().flatten().collect();
    Tensor::from_vec(flat, (vocab - rows, dim), table.device())
}

/// A `rows x cols` matrix (rows >= cols) with orthonormal columns, from a seeded Gaussian one
/// (Gram-Schmidt).
fn orthonormal_columns(rows: usize, cols: usize, rng: &mut impl rand::Rng) -> Vec<Vec<f32>> {
    let mut columns: Vec<Vec<f64>> = Vec::with_capacity(cols);
    while columns.len() < cols {
        let mut v: Vec<f64> = (0..rows)
            .map(|_| cxr_train::sample_normal(rng, 0.0, 1.0) as f64)
            .collect();
        for c in &columns {
            let d: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(c).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-6 {
            columns.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    (0..rows)
        .map(|i| columns.iter().map(|c| c[i] as f32).collect())
        .collect()
}
