//! One module per subcommand.

pub mod chat;
pub mod classifier;
pub mod data;
pub mod data_parallel;
pub mod dataset;
pub mod demo;
pub mod device;
pub mod dicom;
pub mod eval;
pub mod gallery;
pub mod label;
pub mod lm;
pub mod phantom;
pub mod preprocess;
pub mod tasks;
pub mod train;
pub mod value_enum;
pub mod vqgan;

use indicatif::{ProgressBar, ProgressStyle};

/// The progress bar every long command uses.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Writes a file atomically (temporary name, then rename).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    cxr_data::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Progress bars (one per pass) driven by an evaluation's progress.
pub fn progress_bars() -> impl Fn(cxr_eval::Progress<'_>) + Sync {
    let bar = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
    move |p| {
        let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            cxr_eval::Progress::Start { phase, total } => {
                *bar = Some(progress(total as u64, phase))
            }
            cxr_eval::Progress::Advance(n) => {
                if let Some(b) = bar.as_ref() {
                    b.inc(n as u64);
                }
            }
            cxr_eval::Progress::Finish => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
        }
    }
}
