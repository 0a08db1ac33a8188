//! The binary end to end: the demo (the README's first command, its quick profile), phantom generation,
//! DICOM inspection without PHI values, dataset summaries, and clear errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{llm_cxr, random_vqgan, stderr, tiny_llm_cxr};

/// The CheXpert phrase lists from ../shared/data, or None (with a message) when absent.
fn chexpert_phrases() -> Option<std::path::PathBuf> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/chexpert-labeler-phrases");
    if dir.is_dir() {
        Some(dir)
    } else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is absent (CI=true: CI must have it)", dir.display());
        }
        eprintln!("SKIP: {} is absent", dir.display());
        None
    }
}

/// SmolLM2-135M-Instruct where scripts/setup.sh puts it, or None (with a message) when absent.
fn smollm2() -> Option<std::path::PathBuf> {
    let gguf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.is_file() {
        Some(gguf)
    } else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{} is absent (scripts/setup.sh fetches it) (CI=true: CI must have it)",
                gguf.display()
            );
        }
        eprintln!(
            "SKIP: {} is absent (scripts/setup.sh fetches it)",
            gguf.display()
        );
        None
    }
}

/// `llm-cxr phantom --n N --size SIZE` into DIR/ph, which it returns.
fn phantoms(dir: &Path, n: u32, size: u32) -> std::path::PathBuf {
    let ph = dir.join("ph");
    let o = llm_cxr(&[
        "phantom",
        "--n",
        &n.to_string(),
        "--size",
        &size.to_string(),
        "--out",
        ph.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    ph
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn help_teaches_the_subcommands() {
    let o = llm_cxr(&["--help"]);
    assert!(o.status.success());
    let text = stdout(&o);
    for sub in [
        "demo",
        "phantom",
        "gallery",
        "preprocess",
        "dicom",
        "dataset",
        "vqgan",
        "chat",
        "data",
        "train",
        "report",
        "draw",
        "ask",
    ] {
        assert!(text.contains(sub), "--help lacks {sub}:\n{text}");
    }
    let o = llm_cxr(&["phantom", "--help"]);
    assert!(stdout(&o).contains("--seed"));
}

/// The quick demo, run once for this test binary (its trained VQ-GAN, classifier and base model
/// serve the memorization test too): the folder it ran in, or None when its inputs are absent.
fn quick_demo() -> Option<&'static Path> {
    // Under target/ with a fixed name, emptied first: a static is never dropped, and a temporary
    // folder here outlived every test run (3.3 GB each).
    static DEMO: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DEMO.get_or_init(|| {
        let (phrases, gguf) = (chexpert_phrases()?, smollm2()?);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quick-demo");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let o = run_demo(&dir, &phrases, &gguf, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("report micro-F1"), "{}", stdout(&o));
        Some(dir)
    })
    .as_deref()
}

/// `llm-cxr demo --quick --out demo` run from `dir` with a relative --out, as a user runs the
/// README's command.
fn run_demo(dir: &Path, phrases: &Path, gguf: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm-cxr"))
        .current_dir(dir)
        .args([
            "demo",
            "--quick",
            "--out",
            "demo",
            "--base",
            gguf.to_str().unwrap(),
            "--phrases",
            phrases.to_str().unwrap(),
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run llm-cxr")
}

/// The README's first command in its CI profile: every stage runs, the page shows the scores,
/// and a second run skips every finished stage.
#[test]
fn demo_quick_runs_end_to_end_and_skips_finished_stages() {
    let (Some(phrases), Some(gguf)) = (chexpert_phrases(), smollm2()) else {
        return;
    };
    let Some(dir) = quick_demo() else {
        return;
    };
    let out = dir.join("demo");
    let demo_with = |extra: &[&str]| run_demo(dir, &phrases, &gguf, extra);
    let demo = || demo_with(&[]);

    let curve: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("curve.json")).unwrap()).unwrap();
    let last = &curve.as_array().unwrap()[0];
    assert_eq!(last["step"], 12);
    for key in ["report_f1", "image_auroc", "vqa_accuracy", "side_severity"] {
        let v = last[key].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        // Beside it, the control with the images shuffled among the cases.
        let v = last["shuffled"][key].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&v), "shuffled {key} = {v}");
    }
    let step = out.join("eval/step-12");
    let drawn: Vec<csv::StringRecord> = csv::Reader::from_path(step.join("draws/draws.csv"))
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect();
    assert_eq!(drawn.len(), 6, "one drawing per held-out report");
    for row in &drawn {
        let img = image::open(step.join("draws").join(&row[0])).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    let references: Vec<String> = csv::Reader::from_path(step.join("answers.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap()[3].to_string())
        .collect();
    assert_eq!(references.len(), 18, "three questions per held-out image");
    assert!(
        references.iter().any(|r| r.starts_with("Yes"))
            && references.iter().any(|r| r.starts_with("No")),
        "held-out questions are answered yes and no: {references:?}"
    );
    let vqgan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("vqgan/eval-test.json")).unwrap()).unwrap();
    assert!(vqgan["psnr_db"].as_f64().unwrap() > 15.0, "{vqgan}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("lm/model/trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["global_step"], 12);

    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    for part in [
        "Targets",
        "Plain instructions",
        "Held-out cases",
        "llm-cxr vqgan train",
        "Report evaluation",
        "Image evaluation",
        "VQA evaluation",
        "data:image/png;base64",
    ] {
        assert!(page.contains(part), "index.html lacks {part}");
    }
    assert!(!page.contains("(earlier run)"));

    let records = std::fs::read_dir(out.join("stages")).unwrap().count();
    let o = demo();
    assert!(o.status.success(), "{}", stderr(&o));
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(
        page.matches("(earlier run)").count(),
        records,
        "the second run skips every stage"
    );
    let curve: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("curve.json")).unwrap()).unwrap();
    assert_eq!(curve[0]["report_f1"], last["report_f1"]);

    // Other settings into the same folder would mix two runs: refused, naming the folder.
    let o = demo_with(&["--seed", "2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("demo was made with other settings"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn phantom_dicom_inspect_and_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ph");
    let o = llm_cxr(&[
        "phantom",
        "--n",
        "6",
        "--size",
        "64",
        "--seed",
        "3",
        "--dicom",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(summary["images"], 6);

    let dcm = walk(&out)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .unwrap();
    for json in [false, true] {
        let mut args = vec!["dicom", "inspect", dcm.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let o = llm_cxr(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        // The file's own path names the phantom's folders; everything else is the inspection.
        let text = (stdout(&o) + &stderr(&o)).replace(dcm.to_str().unwrap(), "<file>");
        assert!(
            text.contains("PatientName") && text.contains("PatientID"),
            "{text}"
        );
        assert!(!text.contains("PHANTOM^"), "patient name leaked: {text}");
        // The synthetic patient id is the subject id: it must not appear either.
        let subject = dcm
            .ancestors()
            .nth(2)
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()[1..]
            .to_string();
        assert!(!text.contains(&subject), "patient id leaked: {text}");
        assert!(text.contains("MONOCHROME2"));
    }

    let o = llm_cxr(&[
        "dataset",
        "--kind",
        "mimic",
        out.to_str().unwrap(),
        "--check-images",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["images"], 6);
    assert_eq!(s["unreadable_images"], 0);
    assert_eq!(s["parseable_reports"], 6);

    let pre = dir.path().join("pre");
    let o = llm_cxr(&[
        "preprocess",
        dcm.to_str().unwrap(),
        "--size",
        "32",
        "--channels",
        "1",
        "--out",
        pre.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saved = image::open(pre.join(format!(
        "{}.png",
        dcm.file_stem().unwrap().to_str().unwrap()
    )))
    .unwrap();
    assert_eq!((saved.width(), saved.height()), (32, 32));
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("scan.png");
    std::fs::write(&bad, b"not really a png").unwrap();
    let o = llm_cxr(&["preprocess", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("scan.png") && err.contains("not a DICOM, PNG or JPEG"),
        "{err}"
    );

    let o = llm_cxr(&["dataset", "--kind", "mimic", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("mimic-cxr-2.0.0-split.csv"),
        "{}",
        stderr(&o)
    );

    let o = llm_cxr(&["phantom", "--n", "0", "--out", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--n"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn label_reproduces_the_chexpert_reference_csv() {
    let Some(phrases) = chexpert_phrases() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("labeled.csv");
    let o = llm_cxr(&[
        "label",
        phrases.join("sample_reports.csv").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--phrases",
        phrases.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        std::fs::read_to_string(phrases.join("labeled_reports.csv")).unwrap()
    );
    let o = llm_cxr(&[
        "label",
        "missing.csv",
        "--out",
        out.to_str().unwrap(),
        "--phrases",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no mention phrases"), "{}", stderr(&o));
}

#[test]
fn eval_report_scores_perfect_pairs_perfectly() {
    let Some(phrases) = chexpert_phrases() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.csv");
    let mut csv = String::from("generated,reference\n");
    for i in 0..60 {
        let imp = cxr_phantom::PhantomSpec::sample(2, i)
            .sections
            .impression
            .unwrap();
        csv += &format!("\"{imp}\",\"{imp}\"\n");
    }
    std::fs::write(&pairs, csv).unwrap();
    let out = dir.path().join("eval");
    let args = [
        "eval",
        "report",
        pairs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--phrases",
        phrases.to_str().unwrap(),
    ];
    let o = llm_cxr(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report-metrics.json")).unwrap()).unwrap();
    assert_eq!(v["clinical"]["f1"]["micro"], 1.0);
    assert_eq!(v["clinical"]["auroc"]["micro"], 1.0);
    assert_eq!(v["clinical"]["jaccard_micro"], 1.0);
    assert!((v["nlg"]["bleu"][3].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert!(std::fs::read_to_string(out.join("report-metrics.md"))
        .unwrap()
        .contains("LLM-CXR (published)"));
    let roc = image::open(out.join("report-roc.png")).unwrap();
    assert!(
        roc.width() >= 800 && roc.height() >= 600,
        "14 panels, four to a row"
    );

    std::fs::write(&pairs, "text,truth\na,b\n").unwrap();
    let o = llm_cxr(&args);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no column named generated"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn eval_image_runs_the_classifier_and_fid() {
    use cxr_classifier::candle_core::{DType, Device};
    use cxr_classifier::candle_nn::{VarBuilder, VarMap};
    let Some(phrases) = chexpert_phrases() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A random-weight DenseNet-121 in torchxrayvision's layout: the metrics are meaningless, the
    // pipeline is what is tested.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    cxr_classifier::DenseNet::new(&cxr_classifier::DenseNetConfig::densenet121_txv(), vb).unwrap();
    let weights = dir.path().join("densenet.safetensors");
    varmap.save(&weights).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    cxr_classifier::inception::InceptionV3::new(vb).unwrap();
    let inception = dir.path().join("inception.safetensors");
    varmap.save(&inception).unwrap();

    let ph = phantoms(dir.path(), 6, 64);
    let jpgs: Vec<_> = walk(&ph)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    let mut generated = String::from("image,report\n");
    let mut real = String::from("image\n");
    for jpg in &jpgs {
        let report = std::fs::read_to_string(jpg.parent().unwrap().with_extension("txt")).unwrap();
        generated += &format!("{},\"{}\"\n", jpg.display(), report.replace('"', ""));
        real += &format!("{}\n", jpg.display());
    }
    std::fs::write(dir.path().join("generated.csv"), generated).unwrap();
    std::fs::write(dir.path().join("real.csv"), real).unwrap();
    let out = dir.path().join("eval");
    let o = llm_cxr(&[
        "eval",
        "image",
        dir.path().join("generated.csv").to_str().unwrap(),
        "--classifier",
        weights.to_str().unwrap(),
        "--real",
        dir.path().join("real.csv").to_str().unwrap(),
        "--inception",
        inception.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--phrases",
        phrases.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("image-metrics.json")).unwrap()).unwrap();
    assert_eq!(v["clinical"]["images"], 6);
    assert_eq!(
        v["clinical"]["per_observation"].as_array().unwrap().len(),
        11
    );
    assert!(image::open(out.join("image-roc.png")).is_ok());
    // The same images on both sides: the Frechet distance is zero.
    assert!(
        v["fid_classifier_features"].as_f64().unwrap().abs() < 1e-3,
        "{v}"
    );
    assert!(v["fid_inception"].as_f64().unwrap().abs() < 1e-3, "{v}");
    assert!(std::fs::read_to_string(out.join("image-metrics.md"))
        .unwrap()
        .contains("FID on Inception-v3 pool3 features"));
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(page.contains("Image evaluation"));
    // The ROC figure and six sample thumbnails, all inline.
    assert_eq!(page.matches("data:image/png;base64,").count(), 7);
}

#[test]
fn eval_all_writes_vqa_and_report_scores_on_one_page() {
    let Some(phrases) = chexpert_phrases() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vqa = dir.path().join("vqa.csv");
    std::fs::write(
        &vqa,
        "question,answer,reference,type\n\
         Is there a pleural effusion?,Yes.,Yes,presence\n\
         Is there a pneumothorax?,No.,Yes,presence\n\
         Which side is the effusion on?,Left pleural effusion.,Left pleural effusion.,side\n\
         Is the heart enlarged?,<b>maybe</b>,No,presence\n",
    )
    .unwrap();
    let pairs = dir.path().join("pairs.csv");
    std::fs::write(
        &pairs,
        "generated,reference\nSmall left pleural effusion.,Small left pleural effusion.\nNo acute process.,Cardiomegaly.\n",
    )
    .unwrap();
    let out = dir.path().join("eval");
    let o = llm_cxr(&[
        "eval",
        "all",
        "--vqa",
        vqa.to_str().unwrap(),
        "--reports",
        pairs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--phrases",
        phrases.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("vqa-metrics.json")).unwrap()).unwrap();
    assert_eq!(v["overall"]["closed"], 3);
    assert_eq!(v["overall"]["closed_correct"], 1);
    assert_eq!(v["overall"]["closed_unanswered"], 1);
    assert_eq!(v["by_kind"]["side"]["label_agreement"], 1.0);
    assert!(out.join("report-metrics.json").is_file());
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    for part in [
        "Report evaluation",
        "VQA evaluation",
        "Sample cases",
        "<table>",
    ] {
        assert!(page.contains(part), "index.html lacks {part}");
    }
    assert!(!page.contains("<b>maybe"), "answers are escaped");

    let o = llm_cxr(&["eval", "all", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nothing to evaluate"), "{}", stderr(&o));
}

/// `vqgan train` (a tiny config, every loss on, resumed once) -> `encode` -> `decode` -> `eval`,
/// with the plots and token files checked, and a broken token file named in the error.
#[test]
fn vqgan_train_encode_decode_eval() {
    use cxr_classifier::candle_core::{DType, Device};
    use cxr_classifier::candle_nn::{VarBuilder, VarMap};
    let dir = tempfile::tempdir().unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    cxr_classifier::DenseNet::new(&cxr_classifier::DenseNetConfig::densenet121_txv(), vb).unwrap();
    let classifier = dir.path().join("densenet.safetensors");
    varmap.save(&classifier).unwrap();
    let config = dir.path().join("tiny.json");
    std::fs::write(
        &config,
        r#"{"resolution": 32, "in_channels": 1, "out_ch": 1, "ch": 32, "ch_mult": [1, 2],
            "num_res_blocks": 1, "attn_resolutions": [16], "z_channels": 32, "n_embed": 64,
            "embed_dim": 16}"#,
    )
    .unwrap();
    let ph = phantoms(dir.path(), 8, 48);
    let run = dir.path().join("run");
    let train = |steps: &str| {
        llm_cxr(&[
            "vqgan",
            "train",
            "--data",
            ph.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--steps",
            steps,
            "--batch",
            "2",
            "--classifier",
            classifier.to_str().unwrap(),
            "--cip-start",
            "1",
            "--disc-start",
            "2",
            "--restart-every",
            "2",
            "--checkpoint-every",
            "2",
        ])
    };
    let o = train("2");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = train("4");
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read_to_string(run.join("train-log.csv")).unwrap();
    assert_eq!(
        log.lines().count(),
        5,
        "header + 4 steps, resumed once:\n{log}"
    );
    for png in ["loss-curve.png", "reconstructions.png"] {
        image::open(run.join(png)).unwrap();
    }
    let weights = run.join("vqgan.safetensors");

    let tokens = dir.path().join("tokens");
    let o = llm_cxr(&[
        "vqgan",
        "encode",
        "--data",
        ph.to_str().unwrap(),
        "--vqgan",
        weights.to_str().unwrap(),
        "--out",
        tokens.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let files: Vec<_> = std::fs::read_dir(&tokens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    assert_eq!(files.len(), 8);
    assert!(tokens.join(cxr_vqgan::identity::IDENTITY_FILE).is_file());
    let (codes, side) = cxr_vqgan::tokens::read(&files[0], 64).unwrap();
    assert_eq!((codes.len(), side), (256, 16));

    let pngs = dir.path().join("decoded");
    let o = llm_cxr(&[
        "vqgan",
        "decode",
        files[0].to_str().unwrap(),
        "--vqgan",
        weights.to_str().unwrap(),
        "--out",
        pngs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stem = files[0].file_stem().unwrap().to_str().unwrap();
    let img = image::open(pngs.join(format!("{stem}.png"))).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));

    let o = llm_cxr(&[
        "vqgan",
        "eval",
        "--data",
        ph.to_str().unwrap(),
        "--vqgan",
        weights.to_str().unwrap(),
        "--split",
        "all",
        "--classifier",
        classifier.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["images"], 8);
    assert!(v["psnr_db"].as_f64().unwrap() > 0.0);
    assert!((0.0..=1.0).contains(&v["label_agreement"].as_f64().unwrap()));
    assert!(v["codebook"]["used"].as_u64().unwrap() >= 1);

    let bad = dir.path().join("bad.npy");
    std::fs::write(&bad, b"not numpy").unwrap();
    let o = llm_cxr(&[
        "vqgan",
        "decode",
        bad.to_str().unwrap(),
        "--vqgan",
        weights.to_str().unwrap(),
        "--out",
        pngs.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.npy"), "{}", stderr(&o));
}

#[test]
fn chat_answers_streams_batches_and_rejects_bad_models() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bert");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let o = llm_cxr(&["chat", "--model", model.to_str().unwrap(), "--prompt", "hi"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("config.json") && stderr(&o).contains("bert"),
        "{}",
        stderr(&o)
    );
    let broken = dir.path().join("broken.gguf");
    std::fs::write(&broken, b"GGUF but not really").unwrap();
    let o = llm_cxr(&[
        "chat",
        "--model",
        broken.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("broken.gguf"), "{}", stderr(&o));

    let Some(gguf) = smollm2() else {
        return;
    };
    let g = gguf.to_str().unwrap();
    let o = llm_cxr(&[
        "chat",
        "--model",
        g,
        "--prompt",
        "Name a planet.",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).trim().len() > 2, "{:?}", stdout(&o));
    let o = llm_cxr(&[
        "chat",
        "--model",
        g,
        "--prompt",
        "Name a planet.",
        "--prompt",
        "Name a color.",
        "--max-new-tokens",
        "6",
        "--template",
        "alpaca",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("### Name a planet.") && out.contains("### Name a color."),
        "{out}"
    );
}

/// GGUF base -> `lm init` (LLM-CXR's keys and image ids, f32 HF directory) -> the saved model
/// loads and still answers.
#[test]
fn lm_init_extends_a_base_model_into_an_hf_directory() {
    let Some(gguf) = smollm2() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smol-cxr");
    let o = llm_cxr(&[
        "lm",
        "init",
        "--base",
        gguf.to_str().unwrap(),
        "--codes",
        "64",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    // SmolLM2 has 49152 ids; the three keys take 49152-49154, the codes start at 49155.
    assert_eq!(config["llm_cxr_image_vocab"]["base"], 49155);
    assert_eq!(config["vocab_size"], 49155 + 64);
    assert_eq!(config["model_type"], "llama");
    let o = llm_cxr(&[
        "chat",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-new-tokens",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "{}", stdout(&o));
    // A second init of an extended model is refused.
    let o = llm_cxr(&[
        "lm",
        "init",
        "--base",
        out.to_str().unwrap(),
        "--out",
        dir.path().join("again").to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("already has an image vocabulary"),
        "{}",
        stderr(&o)
    );
}

/// `data build` on phantoms with 4 x 4 token files, then `train`: a run killed with SIGKILL and
/// started again ends with the same weights as one never killed.
#[test]
fn data_build_then_train_resumes_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_llm_cxr(dir.path()) else {
        return;
    };
    let ph = phantoms(dir.path(), 12, 32);
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let meta = std::fs::read_to_string(ph.join("mimic-cxr-2.0.0-metadata.csv")).unwrap();
    for (k, line) in meta.lines().skip(1).enumerate() {
        let id = line.split(',').next().unwrap();
        let codes: Vec<u16> = (0..16).map(|i| ((i * 3 + k) % 64) as u16).collect();
        cxr_vqgan::tokens::write(&tokens.join(cxr_vqgan::tokens::file_name(id)), &codes, 4)
            .unwrap();
    }
    let built = dir.path().join("built");
    let o = llm_cxr(&[
        "data",
        "build",
        "--data",
        ph.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--stage",
        "2",
        "--max-tokens",
        "256",
        "--out",
        built.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("report-to-cxr"), "{}", stdout(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(built.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["image_vocab"]["codes"], 64);

    let train = |out: &Path, steps: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_llm-cxr"));
        c.args([
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            built.to_str().unwrap(),
            "--validation",
            built.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            steps,
            "--lr",
            "1e-3",
            "--warmup",
            "5",
            "--micro-batch",
            "2",
            "--checkpoint-every",
            "1",
            "--eval-every",
            "10",
        ])
        .env("RUST_LOG", "warn");
        c
    };
    let clean = dir.path().join("clean");
    let o = train(&clean, "30").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read_to_string(clean.join("train-log.csv")).unwrap();
    let rows: Vec<Vec<f64>> = log
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|f| f.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 30);
    assert!(rows[29][1] < rows[0][1], "the training loss falls");
    assert!(
        rows[9][2].is_finite() && rows[29][2].is_finite(),
        "validation loss logged"
    );
    assert!(image::open(clean.join("loss-curve.png")).is_ok());
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(clean.join("model").join(f).is_file(), "{f}");
    }

    let killed = dir.path().join("killed");
    let mut child = train(&killed, "30").spawn().unwrap();
    let log_path = killed.join("train-log.csv");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&log_path).map_or(0, |l| l.lines().count()) < 6 {
        assert!(started.elapsed().as_secs() < 120, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.join("model").exists(),
        "killed before the end (otherwise this test proves nothing)"
    );
    let o = train(&killed, "30").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(clean.join("model/model.safetensors")).unwrap(),
        std::fs::read(killed.join("model/model.safetensors")).unwrap(),
        "resumed weights equal the uninterrupted run's"
    );

    // Asked for more steps, a finished run continues from its checkpoint and ends where a run
    // trained that far in one go ends.
    let o = train(&killed, "34").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let longer = dir.path().join("longer");
    let o = train(&longer, "34").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(longer.join("model/model.safetensors")).unwrap(),
        std::fs::read(killed.join("model/model.safetensors")).unwrap(),
        "continued weights equal the longer run's"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(killed.join("model/trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["global_step"], 34);

    // LoRA: only the adapters are checkpointed; the saved model has them merged in.
    let lora = dir.path().join("lora");
    let mut c = train(&lora, "30");
    c.args(["--lora-rank", "4"]);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let full_ck = std::fs::metadata(clean.join("checkpoint.safetensors"))
        .unwrap()
        .len();
    let lora_ck = std::fs::metadata(lora.join("checkpoint.safetensors"))
        .unwrap()
        .len();
    assert!(
        lora_ck * 20 < full_ck,
        "LoRA checkpoint {lora_ck} B vs full {full_ck} B"
    );
    assert_eq!(
        std::fs::metadata(lora.join("model/model.safetensors"))
            .unwrap()
            .len(),
        std::fs::metadata(clean.join("model/model.safetensors"))
            .unwrap()
            .len(),
        "the merged model has every weight"
    );

    // Data-parallel: two ranks (threads, on the CPU) sharing each step's two micro-batches write
    // the model one rank writes, bit for bit; the micro-batches must split evenly.
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut c = train(&out, "4");
        c.args(["--grad-accum", "2"]).args(extra);
        let o = c.output().unwrap();
        (out.join("model/model.safetensors"), o)
    };
    let (one, o) = run("one-rank", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (two, o) = run("two-ranks", &["--ranks", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
    let (_, o) = run("uneven", &["--ranks", "3"]);
    assert!(
        !o.status.success() && stderr(&o).contains("multiple of the rank count"),
        "{}",
        stderr(&o)
    );
    // Mixed precision: bf16 products train a model close to, not equal to, f32's.
    let (bf16, o) = run("bf16", &["--precision", "bf16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(&one).unwrap(), std::fs::read(&bf16).unwrap());
}

/// `report`, `draw` and `ask` through an (untrained) tiny LLM-CXR model and a random VQ-GAN
/// whose 64 codes match its image vocabulary: the plumbing, not the quality.
#[test]
fn report_draw_and_ask_run_through_both_models() {
    let dir = tempfile::tempdir().unwrap();
    let Some(model) = tiny_llm_cxr(dir.path()) else {
        return;
    };
    let (vqgan, config) = random_vqgan(dir.path(), 64, "vq64");
    let ph = phantoms(dir.path(), 3, 32);
    let images: Vec<String> = walk(&ph)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| p.display().to_string())
        .collect();
    let models = |vq: &Path, cfg: &Path| -> Vec<String> {
        [
            "--model",
            model.to_str().unwrap(),
            "--vqgan",
            vq.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--batch",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        llm_cxr(&refs)
    };

    let reports = dir.path().join("reports.csv");
    let mut args = vec!["report".to_string()];
    args.extend(images.iter().cloned());
    args.extend(models(&vqgan, &config));
    args.extend(["--max-new-tokens", "8", "--out", reports.to_str().unwrap()].map(String::from));
    let o = run(args);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<csv::StringRecord> = csv::Reader::from_path(&reports)
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(&rows[1][0], images[1].as_str());

    let drawn = dir.path().join("drawn");
    let mut args = vec!["draw".to_string(), "Small left pleural effusion.".into()];
    args.extend(models(&vqgan, &config));
    args.extend(["--n", "3", "--out", drawn.to_str().unwrap()].map(String::from));
    let o = run(args);
    assert!(o.status.success(), "{}", stderr(&o));
    for k in 0..3 {
        let img = image::open(drawn.join(format!("draw-0-{k}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (16, 16));
    }
    // draws.csv lists each image beside its report, as `eval image` reads it.
    let listed: Vec<csv::StringRecord> = csv::Reader::from_path(drawn.join("draws.csv"))
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect();
    assert_eq!(listed.len(), 3);
    assert_eq!(&listed[2][0], "draw-0-2.png");
    assert_eq!(&listed[2][1], "Small left pleural effusion.");

    let mut args = vec![
        "ask".to_string(),
        images[0].clone(),
        "Is there an effusion?".into(),
        "Which side?".into(),
    ];
    args.extend(models(&vqgan, &config));
    args.extend(["--max-new-tokens", "4"].map(String::from));
    let o = run(args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("Q: ").count(), 2, "{}", stdout(&o));

    // A question file through `ask --from` into the CSV `eval vqa` scores.
    let questions = dir.path().join("questions.csv");
    let mut q = String::from("image,question,reference,type\n");
    for (i, img) in images.iter().enumerate() {
        q += &format!(
            "{img},Is there an effusion?,{},presence\n",
            if i % 2 == 0 { "Yes." } else { "No." }
        );
    }
    std::fs::write(&questions, q).unwrap();
    let answers = dir.path().join("answers.csv");
    let mut args = vec![
        "ask".to_string(),
        "--from".into(),
        questions.display().to_string(),
    ];
    args.extend(models(&vqgan, &config));
    args.extend(["--max-new-tokens", "4", "--out", answers.to_str().unwrap()].map(String::from));
    let o = run(args);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<csv::StringRecord> = csv::Reader::from_path(&answers)
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!((&rows[1][3], &rows[1][4]), ("No.", "presence"));
    if let Some(phrases) = chexpert_phrases() {
        let out = dir.path().join("vqa-eval");
        let o = llm_cxr(&[
            "eval",
            "vqa",
            answers.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--phrases",
            phrases.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("vqa-metrics.json")).unwrap()).unwrap();
        assert_eq!(v["overall"]["closed"], 3);
        assert!(std::fs::read_to_string(out.join("index.html"))
            .unwrap()
            .contains("<img"));
    }

    // A VQ-GAN whose codebook does not match the model's image vocabulary is refused.
    let (vq32, config32) = random_vqgan(dir.path(), 32, "vq32");
    let mut args = vec!["ask".to_string(), images[0].clone(), "Anything?".into()];
    args.extend(models(&vq32, &config32));
    let o = run(args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("32 codes"), "{}", stderr(&o));
}

/// `data vqa` with the (untrained) tiny model: every report gets a line and the run resumes
/// where it stopped (the builder's use of the file is tested in cxr-instruct).
#[test]
fn data_vqa_resumes_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (Some(model), Some(phrases)) = (tiny_llm_cxr(dir.path()), chexpert_phrases()) else {
        return;
    };
    let ph = phantoms(dir.path(), 8, 32);
    let out = dir.path().join("vqa.jsonl");
    let run = |limit: &str| {
        llm_cxr(&[
            "data",
            "vqa",
            "--data",
            ph.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--phrases",
            phrases.to_str().unwrap(),
            "--all-reports",
            "--limit",
            limit,
            "--max-new-tokens",
            "8",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = run("2");
    assert!(o.status.success(), "{}", stderr(&o));
    let first = std::fs::read_to_string(&out).unwrap();
    assert_eq!(first.lines().count(), 2);
    assert!(stdout(&o).contains("2 reports:"), "{}", stdout(&o));
    let o = run("3");
    assert!(o.status.success(), "{}", stderr(&o));
    let second = std::fs::read_to_string(&out).unwrap();
    assert_eq!(second.lines().count(), 3);
    assert!(
        second.starts_with(&first),
        "done reports are kept, not redone"
    );
    for line in second.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["image_id"].is_string() && v["pairs"].is_array());
    }
}

/// The canary of image-conditioned learning: the embedded default's model, fine-tuned briefly
/// on eight training phantoms with different findings in both directions, must give each image
/// its own report (the labeler's labels of its true report) and draw each report's own image
/// (its codes, teacher-forced and free-running; the classifier's labels of the drawing). A
/// model that ignores the image writes one report for all eight and draws one image.
#[test]
fn eight_phantoms_are_memorized_in_both_directions() {
    const K: usize = 8;
    let (Some(phrases), Some(demo)) = (chexpert_phrases(), quick_demo()) else {
        return;
    };
    let demo = demo.join("demo");
    let labeler = cxr_eval::labeler::ReportLabeler::from_dir(&phrases).unwrap();
    // What a report says is there: the observations the labeler reads as positive or uncertain
    // (micro-F1's view; two normal reports differ only in which negatives they mention).
    let findings_of = |report: &str| -> Vec<usize> {
        let labels = labeler.label(report);
        (0..labels.0.len())
            .filter(|&i| {
                matches!(
                    labels.0[i],
                    Some(cxr_data::Label::Positive | cxr_data::Label::Uncertain)
                )
            })
            .collect()
    };

    // Eight frontal training phantoms whose reports name different findings.
    let ds = cxr_data::open_dataset(cxr_data::DatasetKind::Mimic, &demo.join("phantoms")).unwrap();
    let mut records: Vec<&cxr_data::CxrRecord> = ds
        .records()
        .iter()
        .filter(|r| r.split == Some(cxr_data::Split::Train) && r.is_frontal())
        .collect();
    records.sort_by(|a, b| a.image_id.cmp(&b.image_id));
    let mut chosen: Vec<(&cxr_data::CxrRecord, String)> = Vec::new();
    for r in records {
        let Some(text) = r.sections().and_then(|s| s.stage1_text()) else {
            continue;
        };
        let found = findings_of(&text);
        if chosen.iter().all(|(_, t)| findings_of(t) != found) {
            chosen.push((r, text));
        }
        if chosen.len() == K {
            break;
        }
    }
    assert_eq!(
        chosen.len(),
        K,
        "the quick demo's phantoms have {K} distinct reports"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let mut table = csv::Writer::from_path(dir.path().join("cases.csv")).unwrap();
    table.write_record(["image", "report", "split"]).unwrap();
    for (r, _) in &chosen {
        let image = r.image_path.display().to_string();
        table
            .write_record([image.as_str(), r.report.as_deref().unwrap(), "train"])
            .unwrap();
    }
    table.flush().unwrap();
    // One phrasing per direction, the one `report` and `draw` ask with: with twelve, each of
    // eight images would come with its own phrasing, which the model could key on instead.
    let phrasings = cxr_instruct::Phrasings::default();
    std::fs::write(
        dir.path().join("phrasings.json"),
        serde_json::json!({
            "cxr_to_report": [phrasings.cxr_to_report[0]],
            "report_to_cxr": [phrasings.report_to_cxr[0]],
        })
        .to_string(),
    )
    .unwrap();
    let demo_path = |name: &str| demo.join(name).display().to_string();
    let ok = |o: Output| assert!(o.status.success(), "{}", stderr(&o));
    ok(llm_cxr(&[
        "data",
        "build",
        "--data",
        &path("cases.csv"),
        "--kind",
        "csv",
        "--tokens",
        &demo_path("tokens"),
        "--model",
        &demo_path("lm-init"),
        "--both-directions",
        "--vqa-per-image",
        "0",
        "--text-fraction",
        "0",
        "--phrasings",
        &path("phrasings.json"),
        "--out",
        &path("data"),
    ]));
    // The budget: 192 samples (each image 12 times per direction), 4 minutes here.
    ok(llm_cxr(&[
        "train",
        "--model",
        &demo_path("lm-init"),
        "--data",
        &path("data"),
        "--steps",
        "48",
        "--micro-batch",
        "4",
        "--lr",
        "2e-4",
        "--image-lr",
        "5e-3",
        "--warmup",
        "5",
        "--checkpoint-every",
        "1000",
        "--out",
        &path("lm"),
    ]));
    let model = path("lm/model");
    let vqgan = demo_path("vqgan/vqgan.safetensors");
    let images: Vec<String> = chosen
        .iter()
        .map(|(r, _)| r.image_path.display().to_string())
        .collect();
    // `report` or `draw` greedily through the memorizing model, into `out`.
    let greedy = |task: &str, inputs: Vec<&str>, extra: &[&str], out: &str| {
        let mut cmd = vec![task];
        cmd.extend(inputs);
        cmd.extend(["--model", &model, "--vqgan", &vqgan, "--temperature", "0"]);
        cmd.extend(extra);
        cmd.extend(["--out", out]);
        ok(llm_cxr(&cmd));
    };
    greedy(
        "report",
        images.iter().map(String::as_str).collect(),
        &["--max-new-tokens", "160"],
        &path("reports.csv"),
    );
    let reports: Vec<String> = csv::Reader::from_path(dir.path().join("reports.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap()[1].to_string())
        .collect();
    let own_labels = chosen
        .iter()
        .zip(&reports)
        .filter(|((_, truth), written)| findings_of(truth) == findings_of(written))
        .count();
    let distinct: std::collections::HashSet<&String> = reports.iter().collect();
    assert!(
        own_labels == K && distinct.len() == K,
        "{own_labels} of {K} reports name their image's findings, {} distinct:\n{}",
        distinct.len(),
        reports.join("\n")
    );

    // Teacher-forced: each report's own codes, against those of the other images.
    let lm = cxr_lm::LanguageModel::load(
        std::path::Path::new(&model),
        cxr_lm::WeightMode::Inference,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let vocab = lm.image_vocab.unwrap();
    let phrasing = cxr_instruct::Phrasings::default().report_to_cxr[0].clone();
    let token_file = |id: &str| demo.join("tokens").join(cxr_vqgan::tokens::file_name(id));
    let codes: Vec<Vec<u16>> = chosen
        .iter()
        .map(|(r, _)| {
            cxr_vqgan::tokens::read(&token_file(&r.image_id), vocab.codes as usize)
                .unwrap()
                .0
        })
        .collect();
    let accuracy = |report: &str, codes: &[u16]| -> f64 {
        let sample =
            cxr_instruct::template::report_to_cxr("case", codes.to_vec(), report, &phrasing);
        let t = cxr_instruct::template::tokenize(&sample, &lm.tokenizer, &vocab).unwrap();
        let ids = candle_core::Tensor::new(t.ids.as_slice(), &candle_core::Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        // The response is `<`, the codes, `>`: position p predicts token p + 1.
        let first = (t.response_start..t.ids.len())
            .find(|&p| vocab.code(t.ids[p]).is_some())
            .unwrap();
        let logits = lm.model.forward(&ids).unwrap().squeeze(0).unwrap();
        let logits = logits
            .narrow(0, first - 1, codes.len())
            .unwrap()
            .narrow(1, vocab.base as usize, vocab.codes as usize)
            .unwrap();
        let best: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        best.iter()
            .zip(codes)
            .filter(|(b, c)| **b == **c as u32)
            .count() as f64
            / codes.len() as f64
    };
    let own: f64 = (0..K)
        .map(|i| accuracy(&chosen[i].1, &codes[i]))
        .sum::<f64>()
        / K as f64;
    // Chance is 1 / 512. (Another image's codes are no control here: teacher-forced, a few
    // codes name a memorized image and the rest follow; the free-running drawings below are.)
    assert!(own > 0.5, "teacher-forced code accuracy {own:.3}");

    // Free-running greedy drawings: each nearer its own image's reconstruction than any other's.
    greedy(
        "draw",
        chosen.iter().map(|(_, t)| t.as_str()).collect(),
        &[],
        &path("draws"),
    );
    let mut cmd: Vec<String> = vec!["vqgan".into(), "decode".into()];
    cmd.extend(
        chosen
            .iter()
            .map(|(r, _)| token_file(&r.image_id).display().to_string()),
    );
    cmd.extend([
        "--vqgan".into(),
        vqgan.clone(),
        "--out".into(),
        path("recon"),
    ]);
    ok(llm_cxr(&cmd.iter().map(String::as_str).collect::<Vec<_>>()));
    let load = |p: std::path::PathBuf| cxr_image::load_image(&p).unwrap();
    let recon: Vec<cxr_image::GrayImage> = chosen
        .iter()
        .map(|(r, _)| {
            let stem = cxr_vqgan::tokens::file_name(&r.image_id).replace(".npy", ".png");
            load(dir.path().join("recon").join(stem))
        })
        .collect();
    let drawn: Vec<cxr_image::GrayImage> = (0..K)
        .map(|i| load(dir.path().join(format!("draws/draw-{i}-0.png"))))
        .collect();
    let distance = |a: &cxr_image::GrayImage, b: &cxr_image::GrayImage| {
        a.pixels
            .iter()
            .zip(&b.pixels)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
    };
    let nearest_own = (0..K)
        .filter(|&i| {
            (0..K)
                .all(|j| j == i || distance(&drawn[i], &recon[i]) < distance(&drawn[i], &recon[j]))
        })
        .count();

    // The classifier reads the drawing as it reads the image it was drawn from.
    let classifier = cxr_classifier::DenseNet::load(
        &cxr_classifier::DenseNetConfig::densenet121_txv(),
        &demo.join("classifier/classifier.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let findings = |img: &cxr_image::GrayImage| -> Vec<bool> {
        let x = cxr_classifier::txv_input(img, 64, &candle_core::Device::Cpu).unwrap();
        let p: Vec<f32> = classifier
            .forward_t(&x, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        p.iter().map(|&logit| logit > 0.0).collect()
    };
    let agree = (0..K)
        .filter(|&i| findings(&drawn[i]) == findings(&recon[i]))
        .count();
    eprintln!(
        "memorized: {own_labels} of {K} reports, {} distinct; teacher-forced codes {own:.3}; \
         {nearest_own} drawings nearest their own image, {agree} \
         with its classifier labels",
        distinct.len()
    );
    assert!(
        nearest_own >= K - 1 && agree >= K - 1,
        "{nearest_own} of {K} drawings nearest their own image, {agree} with its classifier labels"
    );
}
