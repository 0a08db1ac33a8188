//! Resuming a run from its checkpoint, for every trainer: the checkpoint's tensors, its metadata
//! read as typed values, the run record compared, the variables and optimizer restored, and one
//! error, [`ResumeError`], for a checkpoint that does not fit this run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{Device, Tensor, Var};

use crate::{load_checkpoint, AdamW, RunRecord, TrainError};

/// Why a checkpoint cannot be resumed by this run: it was written by another run, or lacks
/// something a resume needs. Names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct ResumeError {
    pub path: PathBuf,
    pub reason: String,
}

/// A checkpoint opened to resume from.
pub struct Resume {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

impl Resume {
    /// Reads the checkpoint at `path` (written by [`crate::save_checkpoint`]) into host memory:
    /// [`Resume::restore`] and [`Resume::restore_optimizer`] move each tensor to its variable's
    /// device, so a GPU never holds the weights and moments twice.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let (tensors, metadata) = load_checkpoint(path, &Device::Cpu)?;
        Ok(Resume {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    /// The refusal of this checkpoint for `reason`.
    pub fn refuse(&self, reason: impl Into<String>) -> ResumeError {
        ResumeError {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The metadata entry `key` as a `T`; `None` when it is absent or does not parse.
    pub fn get<T: FromStr>(&self, key: &str) -> Option<T> {
        self.metadata.get(key).and_then(|v| v.parse().ok())
    }

    /// The metadata entry `key`, which a resume needs ("no KEY in metadata" otherwise).
    pub fn require<T: FromStr>(&self, key: &str) -> Result<T, ResumeError> {
        self.get(key)
            .ok_or_else(|| self.refuse(format!("no {key} in metadata")))
    }

    /// Refuses a checkpoint whose metadata `key` is not this run's `value` ("was written with
    /// another KEY (theirs), this run has VALUE; use a new output folder").
    pub fn check_setting<T>(&self, key: &str, value: &T) -> Result<(), ResumeError>
    where
        T: FromStr + PartialEq + std::fmt::Display,
    {
        if self.get::<T>(key).as_ref() == Some(value) {
            return Ok(());
        }
        let theirs = self.metadata.get(key).map_or("none", String::as_str);
        Err(self.refuse(format!(
            "was written with another {} ({theirs}), this run has {value}; use a new output folder",
            key.replace('_', " ")
        )))
    }

    /// Refuses a checkpoint of another run, listing every setting that differs.
    pub fn check_record(&self, record: &RunRecord) -> Result<(), ResumeError> {
        record.compare(&self.metadata).map_err(|r| self.refuse(r))
    }

    /// The tensor `name` ("lacks NAME" when the checkpoint has none).
    pub fn tensor(&self, name: &str) -> Result<&Tensor, ResumeError> {
        self.tensors
            .get(name)
            .ok_or_else(|| self.refuse(format!("lacks {name}")))
    }

    /// Sets each variable to the checkpoint's tensor of its name and shape.
    pub fn restore<'a>(
        &self,
        vars: impl IntoIterator<Item = (&'a String, &'a Var)>,
    ) -> Result<(), ResumeError> {
        for (name, var) in vars {
            let t = self.tensor(name)?;
            if t.dims() != var.dims() {
                return Err(self.refuse(format!(
                    "{name} is {:?}, the model's is {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            t.to_device(var.device())
                .and_then(|t| var.set(&t))
                .map_err(|e| self.refuse(format!("{name}: {e}")))?;
        }
        Ok(())
    }

    /// Restores an optimizer's moments; `updates`: the updates it had made.
    pub fn restore_optimizer(&self, opt: &mut AdamW, updates: u64) -> Result<(), ResumeError> {
        opt.load_state(&self.tensors, updates)
            .map_err(|e| self.refuse(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_typed_metadata_and_names_the_file_in_each_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        let w = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let meta = BTreeMap::from([("step".to_string(), "7".to_string())]);
        crate::save_checkpoint(&path, &[("w".into(), w)], &meta).unwrap();
        let ck = Resume::open(&path).unwrap();
        assert_eq!(ck.require::<u64>("step").unwrap(), 7);
        assert_eq!(ck.get::<u64>("seed"), None);
        let e = ck.require::<u64>("seed").unwrap_err().to_string();
        assert!(
            e.contains("ck.safetensors") && e.ends_with("no seed in metadata"),
            "{e}"
        );
        let v = Var::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        ck.restore([(&"w".to_string(), &v)]).unwrap();
        assert_eq!(v.as_tensor().to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        let e = ck
            .restore([(&"x".to_string(), &v)])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("lacks x"), "{e}");
        let long = Var::new(&[0f32; 3], &Device::Cpu).unwrap();
        let e = ck
            .restore([(&"w".to_string(), &long)])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("w is [2], the model's is [3]"), "{e}");
        ck.check_setting("step", &7u64).unwrap();
        let e = ck.check_setting("step", &8u64).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "was written with another step (7), this run has 8; use a new output folder"
            ),
            "{e}"
        );
        let e = ck.check_setting("seed", &1u64).unwrap_err().to_string();
        assert!(e.contains("another seed (none)"), "{e}");
    }
}
