//! Text tokenization through the `tokenizers` crate (the same Rust code as Python's `tokenizers`,
//! so ids match the reference), plus the model's chat template rendered with minijinja.

use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use crate::LmError;

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    origin: String,
}

/// One turn of a conversation.
/// Template instructions one chat rendering may run: real templates need about 100 per message
/// (SmolLM2, Llama 3), so this is ample for any conversation a context window holds; minijinja
/// itself caps `range` at 100,000 items and a repeated string at 100 MB.
pub const CHAT_TEMPLATE_FUEL: u64 = 10_000_000;

#[derive(Clone, Debug, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self, LmError> {
        let inner = Tokenizer::from_file(path).map_err(|e| LmError::Tokenizer {
            origin: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut tok = TextTokenizer::new(inner, &path.display().to_string());
        // transformers keeps the chat template and special tokens beside tokenizer.json.
        if let Some(dir) = path.parent() {
            tok.read_tokenizer_config(&dir.join("tokenizer_config.json"));
        }
        Ok(tok)
    }

    pub fn from_json(json: &str, origin: &str) -> Result<Self, LmError> {
        let inner = json.parse::<Tokenizer>().map_err(|e| LmError::Tokenizer {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        Ok(TextTokenizer::new(inner, origin))
    }

    fn new(inner: Tokenizer, origin: &str) -> Self {
        TextTokenizer {
            inner,
            chat_template: None,
            bos_token: None,
            eos_token: None,
            origin: origin.to_string(),
        }
    }

    fn read_tokenizer_config(&mut self, path: &Path) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return;
        };
        let token = |key: &str| match v.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(obj) => obj
                .get("content")
                .and_then(|c| c.as_str())
                .map(String::from),
            None => None,
        };
        self.chat_template = v
            .get("chat_template")
            .and_then(|t| t.as_str())
            .map(String::from);
        self.bos_token = token("bos_token");
        self.eos_token = token("eos_token");
    }

    pub fn with_chat(
        mut self,
        template: Option<String>,
        bos: Option<String>,
        eos: Option<String>,
    ) -> Self {
        self.chat_template = template;
        self.bos_token = bos;
        self.eos_token = eos;
        self
    }

    /// Ids of `text`, with the tokenizer's own special tokens (as `tokenizer(text)` in Python).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LmError> {
        Ok(self.encoding(text)?.get_ids().to_vec())
    }

    pub fn encoding(&self, text: &str) -> Result<tokenizers::Encoding, LmError> {
        self.inner
            .encode(text, true)
            .map_err(|e| LmError::Tokenizer {
                origin: self.origin.clone(),
                reason: e.to_string(),
            })
    }

    /// Ids of `text` alone, without the special tokens the tokenizer would add around it.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, LmError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| LmError::Tokenizer {
                origin: self.origin.clone(),
                reason: e.to_string(),
            })?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, LmError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| LmError::Tokenizer {
                origin: self.origin.clone(),
                reason: e.to_string(),
            })
    }

    /// Python's `len(tokenizer)` for a dense vocabulary: one past the largest id, added tokens
    /// included (the next id a new token gets).
    pub fn len(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Adds `token` as a special token unless it exists; returns its id.
    pub fn add_special_token(&mut self, token: &str) -> Result<u32, LmError> {
        if let Some(id) = self.token_id(token) {
            return Ok(id);
        }
        let bad = |reason: String| LmError::Tokenizer {
            origin: self.origin.clone(),
            reason,
        };
        self.inner
            .add_special_tokens([AddedToken::from(token.to_string(), true)])
            .map_err(|e| bad(format!("cannot add {token:?}: {e}")))?;
        self.token_id(token)
            .ok_or_else(|| bad(format!("{token:?} was added but has no id")))
    }

    /// The ids a generation stops at: LLM-CXR's `### End`, the tokenizer's eos, and the usual
    /// chat end markers, those the vocabulary has.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = [
            Some(crate::image_vocab::END_KEY),
            self.eos_token(),
            Some("<|im_end|>"),
            Some("<|endoftext|>"),
        ]
        .into_iter()
        .flatten()
        .filter_map(|t| self.token_id(t))
        .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the model's chat template (Jinja, as transformers' `apply_chat_template` with
    /// `add_generation_prompt=True`).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, LmError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| LmError::Tokenizer {
                origin: self.origin.clone(),
                reason: "the tokenizer has no chat template".into(),
            })?;
        let bad = |e: minijinja::Error| LmError::Tokenizer {
            origin: self.origin.clone(),
            reason: format!("chat template: {e}"),
        };
        let mut env = minijinja::Environment::new();
        // The template comes from the model's files: a loop nest must end, not run for hours.
        env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template).map_err(bad)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(bad)
    }

    /// Writes `tokenizer.json` (and the chat template in `tokenizer_config.json`) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), LmError> {
        let io = |e: String| LmError::Io {
            path: dir.to_path_buf(),
            reason: e,
        };
        self.inner
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| io(e.to_string()))?;
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": self.chat_template,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        });
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string())
            .map_err(|e| io(e.to_string()))
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Turns a growing list of ids into text pieces safe to print: a piece is released only once it
/// no longer ends inside a multi-byte character.
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl Default for TextStream {
    fn default() -> Self {
        Self::new()
    }
}

impl TextStream {
    pub fn new() -> Self {
        TextStream {
            ids: Vec::new(),
            printed: 0,
        }
    }

    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<Option<String>, LmError> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids, true)?;
        if text.len() > self.printed
            && !text.ends_with('\u{FFFD}')
            && text.is_char_boundary(self.printed)
        {
            let piece = text[self.printed..].to_string();
            self.printed = text.len();
            return Ok(Some(piece));
        }
        Ok(None)
    }

    /// The whole text, and what of it was held back (a character cut between ids), if anything.
    pub fn finish(self, tokenizer: &TextTokenizer) -> Result<(String, Option<String>), LmError> {
        let text = tokenizer.decode(&self.ids, true)?;
        let rest = text
            .get(self.printed..)
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        Ok((text, rest))
    }
}
