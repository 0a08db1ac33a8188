//! What a run is made of, recorded in its checkpoint so that a resume with other data, another
//! base model or other hyperparameters is refused, naming what differs, instead of silently
//! continuing one run with the optimizer state of another.
//!
//! Entries are named in words ("learning rate") and stored in the checkpoint's metadata under
//! `run: <name>`. Data and models enter as [`Fingerprint`]s (SHA-256). A checkpoint written
//! before an entry was recorded is not refused for lacking it: there is nothing to compare.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

const PREFIX: &str = "run: ";

/// A SHA-256 over whatever identifies an input, shown as `sha256:` and its first 16 hex digits.
#[derive(Clone, Default)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// A file's name and whole contents, streamed.
    pub fn file(&mut self, path: &Path) -> std::io::Result<&mut Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut file = std::fs::File::open(path)?;
        self.str(&name);
        self.0.update(file.metadata()?.len().to_le_bytes());
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.0.update(&buf[..n]);
        }
        Ok(self)
    }

    pub fn finish(&self) -> String {
        let digest = self.0.clone().finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{}", &hex[..16])
    }
}

/// The fingerprint of a model folder: its config, tokenizer and weight files (contents), in
/// name order. Other files (logs, plots, checkpoints) do not enter.
pub fn model_dir_fingerprint(dir: &Path) -> std::io::Result<String> {
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.as_deref().unwrap_or("");
            p.is_file()
                && (name == "config.json"
                    || name == "tokenizer.json"
                    || [".safetensors", ".bin", ".gguf", ".pth", ".ckpt"]
                        .iter()
                        .any(|ext| name.ends_with(ext)))
        })
        .collect();
    names.sort();
    let mut f = Fingerprint::new();
    for path in &names {
        f.file(path)?;
    }
    Ok(f.finish())
}

/// A run's named entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRecord {
    entries: BTreeMap<String, String>,
}

impl RunRecord {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry (`name` in words, as the refusal will show it).
    pub fn with(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        self.entries.insert(name.to_string(), value.to_string());
        self
    }

    /// Adds the entries to a checkpoint's metadata.
    pub fn write_to(&self, metadata: &mut BTreeMap<String, String>) {
        for (k, v) in &self.entries {
            metadata.insert(format!("{PREFIX}{k}"), v.clone());
        }
    }

    /// Compares with a checkpoint's metadata: `Err` lists every entry that differs, as
    /// "learning rate: checkpoint 0.0002, now 0.001".
    pub fn compare(&self, metadata: &BTreeMap<String, String>) -> Result<(), String> {
        let differences: Vec<String> = self
            .entries
            .iter()
            .filter_map(|(k, now)| {
                let theirs = metadata.get(&format!("{PREFIX}{k}"))?;
                (theirs != now).then(|| format!("{k}: checkpoint {theirs}, now {now}"))
            })
            .collect();
        if differences.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "was written by a different run ({}); resume with the same data, base model and settings, or use a new output folder",
                differences.join("; ")
            ))
        }
    }
}

/// The fingerprint of a list of training files by path and size, in order: cheap for hundreds of
/// thousands of images, and it changes when an image is added, removed, renamed, reordered or
/// rewritten with another size.
pub fn files_fingerprint<P: AsRef<Path>>(paths: &[P]) -> String {
    let mut f = Fingerprint::new();
    for p in paths {
        let p = p.as_ref();
        f.str(&p.display().to_string());
        match std::fs::metadata(p) {
            Ok(m) => f.bytes(&m.len().to_le_bytes()),
            Err(_) => f.str("missing"),
        };
    }
    f.finish()
}

/// The fingerprint of one file's contents, or `none` without one.
pub fn file_fingerprint(path: Option<&Path>) -> std::io::Result<String> {
    match path {
        Some(p) => Ok(Fingerprint::new().file(p)?.finish()),
        None => Ok("none".to_string()),
    }
}
