//! LLM-CXR's instruction data: the template and the four tasks ([`template`]), synthetic VQA
//! from labels and structured findings ([`synth_vqa`]), plain text instructions ([`text`]), and
//! the builder that turns a dataset and its VQ token files into tokenized, shuffled shards with
//! the reference's stage rules ([`build`]), the fine-tuning loop ([`finetune`]), and the trained
//! model as one engine that every task goes through ([`engine`]).

pub mod build;
pub mod engine;
pub mod finetune;
pub mod llm_vqa;
pub mod run_identity;
pub mod synth_vqa;
pub mod template;
pub mod text;

pub use template::{prompt, Phrasings, Sample, Task, Tokenized};

#[derive(Debug, thiserror::Error)]
pub enum InstructError {
    #[error("{path}: {reason}")]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("sample {source_id}: {reason}")]
    Sample { source_id: String, reason: String },
    #[error("{0}")]
    Empty(String),
    #[error(transparent)]
    Tokens(#[from] cxr_vqgan::tokens::TokenFileError),
    #[error(transparent)]
    Lm(#[from] cxr_lm::LmError),
}
