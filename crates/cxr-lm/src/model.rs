//! One causal LM, whatever its architecture: loading (HF directory, single weight file or GGUF),
//! full-sequence logits for training and a cached step for generation.

use std::path::Path;

use candle_core::{Device, Result, Tensor};

use crate::attention::{LayerCache, Span};
use crate::config::LmConfig;
use crate::gpt_neox::GptNeox;
use crate::llama::Llama;
use crate::weights::{Linear, WeightMode, Weights};
use crate::LmError;

/// A causal LM and the device its weights live on, where its inputs are built.
#[derive(Clone, Debug)]
pub struct CausalLm {
    network: Network,
    device: Device,
}

#[derive(Clone, Debug)]
enum Network {
    GptNeox(GptNeox),
    Llama(Llama),
}

/// The key/value cache of a whole model for one batch.
#[derive(Clone, Debug)]
pub struct Cache {
    layers: Vec<LayerCache>,
}

impl Cache {
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the rows `rows` of the batch, in that order.
    pub fn keep_rows(&mut self, rows: &[usize]) -> Result<()> {
        self.layers.iter_mut().try_for_each(|l| l.keep_rows(rows))
    }

    /// Drops the first `n` positions of every row (left padding that all rows share).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        self.layers.iter_mut().try_for_each(|l| l.drop_front(n))
    }

    /// Puts the rows of `other` under these, right-aligned, with room for `room` more positions;
    /// returns the left padding each side gained, (this side's, `other`'s).
    pub fn stack(&mut self, other: &Cache, room: usize) -> Result<(usize, usize)> {
        let mut grown = (0, 0);
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            grown = mine.stack(theirs, room)?;
        }
        Ok(grown)
    }
}

impl CausalLm {
    /// Builds the model from a config and its weights under HF names.
    pub fn new(config: &LmConfig, weights: &Weights) -> std::result::Result<Self, LmError> {
        let network = match config {
            LmConfig::GptNeox(c) => Network::GptNeox(GptNeox::load(c, weights)?),
            LmConfig::Llama(c) => Network::Llama(Llama::load(c, weights)?),
        };
        Ok(CausalLm {
            network,
            device: weights.device().clone(),
        })
    }

    /// Loads `config.json` and the weights of an HF model directory.
    pub fn load_hf(
        dir: &Path,
        mode: WeightMode,
        device: &Device,
    ) -> std::result::Result<(Self, LmConfig, Weights), LmError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| LmError::Io {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let config = LmConfig::from_json(&text, &config_path.display().to_string())?;
        let weights = Weights::read_hf(dir, mode, device)?;
        let model = CausalLm::new(&config, &weights)?;
        Ok((model, config, weights))
    }

    pub fn config(&self) -> LmConfig {
        match &self.network {
            Network::GptNeox(m) => LmConfig::GptNeox(m.config().clone()),
            Network::Llama(m) => LmConfig::Llama(m.config().clone()),
        }
    }

    /// The device the weights live on: token ids fed to the model are built there.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn vocab_size(&self) -> usize {
        self.config().vocab_size()
    }

    fn hidden(
        &self,
        ids: &Tensor,
        span: &Span,
        cache: Option<&mut [LayerCache]>,
    ) -> Result<Tensor> {
        match &self.network {
            Network::GptNeox(m) => m.hidden(ids, span, cache),
            Network::Llama(m) => m.hidden(ids, span, cache),
        }
    }

    pub fn head(&self) -> &Linear {
        match &self.network {
            Network::GptNeox(m) => m.head(),
            Network::Llama(m) => m.head(),
        }
    }

    /// Logits (b, t, vocab) for every position of unpadded `ids` (b, t): the training forward.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.head().forward(&self.forward_hidden(ids)?)
    }

    /// The mean next-token cross-entropy over the rows of unpadded `ids` (b, t), transformers'
    /// loss with `labels = input_ids`; differentiable in the weights when they are variables.
    pub fn next_token_loss(&self, ids: &Tensor) -> Result<Tensor> {
        let logits = self.forward(ids)?;
        let (b, t, vocab) = logits.dims3()?;
        if t < 2 {
            candle_core::bail!("next-token loss: {t} token per row, at least 2 needed");
        }
        let rows = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), vocab))?;
        let targets = ids.narrow(1, 1, t - 1)?.flatten_all()?;
        cxr_ops::loss::cross_entropy_rows(&rows, &targets)?.mean_all()
    }

    /// The final hidden states (b, t, hidden) of unpadded or right-padded `ids` (b, t), before
    /// the LM head: training applies the head only where the loss counts.
    pub fn forward_hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.hidden(ids, &Span::full(b, t), None)
    }

    /// An empty cache for `batch` sequences of up to `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> Cache {
        let n = match &self.network {
            Network::GptNeox(m) => m.num_layers(),
            Network::Llama(m) => m.num_layers(),
        };
        Cache {
            layers: (0..n).map(|_| LayerCache::new(capacity)).collect(),
        }
    }

    /// Feeds `ids` (b, t) after what `cache` holds and returns the last position's hidden state
    /// (b, hidden); `pad` gives each row's left padding (all zeros for unpadded batches).
    pub fn step_hidden(&self, ids: &Tensor, pad: &[usize], cache: &mut Cache) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let span = Span {
            offset: cache.len(),
            len: t,
            pad: pad.to_vec(),
        };
        let h = self.hidden(ids, &span, Some(&mut cache.layers))?;
        h.narrow(1, t - 1, 1)?.squeeze(1)
    }

    /// As [`CausalLm::step_hidden`], then the LM head: logits (b, vocab).
    pub fn step(&self, ids: &Tensor, pad: &[usize], cache: &mut Cache) -> Result<Tensor> {
        let h = self.step_hidden(ids, pad, cache)?;
        self.head().forward(&h)
    }
}
