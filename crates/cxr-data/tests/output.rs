//! Outputs are never torn or mixed: unique temporaries, whole-folder replacement, and a lock
//! that refuses a second run on one output folder.

use std::fs;

use cxr_data::{replace_dir_atomic, write_atomic, OutputLock, EXPORT_MARKER};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn write_atomic_never_touches_another_runs_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("manifest.json");
    // What a run writing the same file with the old fixed temporary name would have in flight.
    let theirs = dir.path().join("manifest.json.tmp");
    fs::write(&theirs, b"another run's half-written file").unwrap();
    write_atomic(&target, b"{}").unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"{}");
    assert_eq!(
        fs::read(&theirs).unwrap(),
        b"another run's half-written file"
    );
    // Nothing of ours is left behind.
    assert_eq!(names(dir.path()), ["manifest.json", "manifest.json.tmp"]);
}

#[test]
fn a_folder_is_replaced_whole_or_not_at_all() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("model");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("config.json"), b"old").unwrap();
    fs::write(out.join("stale.safetensors"), b"old").unwrap();
    // An earlier export: it carries the marker, so it may be replaced whole.
    fs::write(out.join(EXPORT_MARKER), b"").unwrap();

    // A writer that fails half-way leaves the old folder exactly as it was.
    let failed: Result<(), std::io::Error> = replace_dir_atomic(&out, |tmp| {
        fs::write(tmp.join("config.json"), b"new")?;
        Err(std::io::Error::other("disk full"))
    });
    assert!(failed.unwrap_err().to_string().contains("disk full"));
    assert_eq!(fs::read(out.join("config.json")).unwrap(), b"old");
    assert_eq!(
        names(&out),
        [EXPORT_MARKER, "config.json", "stale.safetensors"]
    );

    // A writer that succeeds gives exactly the new folder: nothing of the old one is mixed in.
    replace_dir_atomic::<std::io::Error>(&out, |tmp| {
        fs::write(tmp.join("config.json"), b"new")?;
        fs::create_dir(tmp.join("sub"))?;
        fs::write(tmp.join("sub/x"), b"x")
    })
    .unwrap();
    assert_eq!(fs::read(out.join("config.json")).unwrap(), b"new");
    assert_eq!(names(&out), [EXPORT_MARKER, "config.json", "sub"]);
    // No temporary folders are left beside it.
    assert_eq!(names(root.path()), ["model"]);

    // A folder that did not exist is created.
    let fresh = root.path().join("fresh");
    replace_dir_atomic::<std::io::Error>(&fresh, |tmp| fs::write(tmp.join("a"), b"a")).unwrap();
    assert_eq!(names(&fresh), [EXPORT_MARKER, "a"]);
}

#[test]
fn a_folder_holding_files_no_export_wrote_is_refused_and_kept() {
    // `lm init --out models` must not empty a folder of the user's other models.
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("models");
    fs::create_dir_all(out.join("other-model")).unwrap();
    fs::write(out.join("config.json"), b"old").unwrap();
    fs::write(out.join("notes.txt"), b"mine").unwrap();
    let e = replace_dir_atomic::<std::io::Error>(&out, |tmp| {
        fs::write(tmp.join("config.json"), b"new")
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("models") && e.contains("notes.txt") && e.contains("other-model"),
        "{e}"
    );
    assert_eq!(names(&out), ["config.json", "notes.txt", "other-model"]);
    assert_eq!(fs::read(out.join("config.json")).unwrap(), b"old");
    assert_eq!(names(root.path()), ["models"]);

    // A folder of other files only, none of them the export's, is refused too.
    fs::remove_dir_all(out.join("other-model")).unwrap();
    fs::remove_file(out.join("config.json")).unwrap();
    let e = replace_dir_atomic::<std::io::Error>(&out, |tmp| {
        fs::write(tmp.join("config.json"), b"new")
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("notes.txt"), "{e}");

    // An export from before the marker (plain files, one of them the export's) is replaced.
    fs::write(out.join("config.json"), b"old").unwrap();
    replace_dir_atomic::<std::io::Error>(&out, |tmp| fs::write(tmp.join("config.json"), b"new"))
        .unwrap();
    assert_eq!(fs::read(out.join("config.json")).unwrap(), b"new");
}

#[test]
fn a_second_run_on_a_locked_folder_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let held = OutputLock::acquire(&out).unwrap();
    let e = OutputLock::acquire(&out).unwrap_err().to_string();
    assert!(e.contains(&out.display().to_string()), "{e}");
    assert!(e.contains("in use by another llm-cxr run"), "{e}");
    assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
    drop(held);
    // Released with its holder.
    let again = OutputLock::acquire(&out).unwrap();
    drop(again);

    let beside = OutputLock::beside(&out).unwrap();
    assert!(beside.path().ends_with(".run.lock"));
    let e = OutputLock::beside(&out).unwrap_err().to_string();
    assert!(e.contains("in use"), "{e}");
}
