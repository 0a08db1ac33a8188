//! What the fuzz targets share: a private scratch folder for parsers that read from a path.

use std::path::PathBuf;

/// Writes `bytes` to `name` inside this process's scratch folder and returns the path. The folder
/// is reused across inputs (one fuzzing process runs one input at a time).
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the fuzz scratch folder");
    }
    std::fs::write(&path, bytes).expect("write the fuzz input");
    path
}

/// This process's scratch folder, emptied on first use.
pub fn scratch_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("llm-cxr-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch folder");
        dir
    })
    .clone()
}
