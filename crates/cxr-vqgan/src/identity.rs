//! Which VQ-GAN made a folder of token files. Codes mean something only to the VQ-GAN that made
//! them: a report trained against codes of another one is trained against noise. The identity
//! is a SHA-256 over the weight file's bytes and the config (as JSON), recorded in the token
//! folder as `vqgan.json` by `llm-cxr vqgan encode` before any token file is written; encoding
//! with another VQ-GAN, and building instruction data against another one, are refused naming
//! both. (`.npy` headers cannot carry it: NumPy refuses headers with keys of its own.)

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::tokens::TokenFileError;
use crate::VqganConfig;

/// The identity file's name inside a token folder.
pub const IDENTITY_FILE: &str = "vqgan.json";

/// A VQ-GAN's identity, and where its weights were read from (for messages only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VqganIdentity {
    /// `sha256:<hex>` of the weight file's bytes followed by the config's JSON.
    pub sha256: String,
    /// The weight file, as given when the identity was taken.
    pub weights: String,
}

impl std::fmt::Display for VqganIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (weights {})", self.sha256, self.weights)
    }
}

/// The SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn token_error(path: &Path, message: String) -> TokenFileError {
    TokenFileError {
        path: path.to_path_buf(),
        message,
    }
}

impl VqganIdentity {
    /// Hashes the weight file (streamed) and the config the model runs with.
    pub fn of(weights: &Path, config: &VqganConfig) -> Result<Self, TokenFileError> {
        let err = |e: std::io::Error| token_error(weights, e.to_string());
        let mut file = std::fs::File::open(weights).map_err(err)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let json =
            serde_json::to_vec(config).map_err(|e| token_error(weights, format!("config: {e}")))?;
        hasher.update(&json);
        Ok(VqganIdentity {
            sha256: format!("sha256:{}", hex(&hasher.finalize())),
            weights: weights.display().to_string(),
        })
    }

    /// The identity recorded in a token folder; `None` when it records none.
    pub fn recorded(tokens: &Path) -> Result<Option<Self>, TokenFileError> {
        let path = tokens.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(token_error(&path, e.to_string())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| token_error(&path, format!("not a VQ-GAN identity: {e}")))
    }

    /// Records this identity in a token folder (atomically).
    pub fn record(&self, tokens: &Path) -> Result<(), TokenFileError> {
        let path = tokens.join(IDENTITY_FILE);
        let json =
            serde_json::to_string_pretty(self).map_err(|e| token_error(&path, e.to_string()))?;
        cxr_data::write_atomic(&path, json.as_bytes())
            .map_err(|e| token_error(&path, e.to_string()))
    }

    /// Refuses a token folder whose codes came from another VQ-GAN than `self`, naming both;
    /// `None` when the folder records no VQ-GAN (token files made by hand or before identities
    /// were recorded), which the caller decides about.
    pub fn check_folder(&self, tokens: &Path) -> Result<Option<()>, TokenFileError> {
        match Self::recorded(tokens)? {
            None => Ok(None),
            Some(theirs) if theirs.sha256 == self.sha256 => Ok(Some(())),
            Some(theirs) => Err(token_error(
                tokens,
                format!(
                    "holds codes from VQ-GAN {theirs}, not from VQ-GAN {self}; codes of one VQ-GAN mean nothing to another: encode into a new folder"
                ),
            )),
        }
    }

    /// Refuses a token folder unless it records this VQ-GAN: `whose` says where this identity
    /// comes from (`--vqgan`, the model's `vqgan.json`), for the message.
    pub fn require_folder(&self, tokens: &Path, whose: &str) -> Result<(), TokenFileError> {
        match self.check_folder(tokens)? {
            Some(()) => Ok(()),
            None => Err(token_error(
                tokens,
                format!(
                    "records no VQ-GAN ({IDENTITY_FILE} is missing), but {whose} is VQ-GAN {self}; encode the images with `llm-cxr vqgan encode` into a new folder"
                ),
            )),
        }
    }
}
