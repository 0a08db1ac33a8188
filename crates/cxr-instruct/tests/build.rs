//! The template, tokenization with the loss mask, and the data builder on a phantom tree with
//! token files, using the GPT-NeoX tokenizer of ../shared/data (dolly's).

use std::path::{Path, PathBuf};

use cxr_data::{open_dataset, DatasetKind};
use cxr_instruct::build::{self, BuildInputs, BuildOptions, Stage};
use cxr_instruct::template::{self, tokenize, Phrasings, Task};
use cxr_lm::{ImageVocab, TextTokenizer};

const CODES: u32 = 64;

fn tokenizer() -> Option<(TextTokenizer, ImageVocab)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/tokenizers/gpt-neox-20b-tokenizer.json");
    if !path.is_file() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is absent (CI=true: CI must have it)", path.display());
        }
        eprintln!("SKIP: {} is absent", path.display());
        return None;
    }
    let mut t = TextTokenizer::from_file(&path).unwrap();
    let v = ImageVocab::extend(&mut t, CODES).unwrap();
    Some((t, v))
}

#[test]
fn template_is_the_reference_text() {
    let s = template::cxr_to_report("img", vec![0; 4], "No acute process.", "Report this.");
    assert_eq!(
        s.text(),
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n\
         ### Instruction:\nReport this.\n\nInput:\n<image>\n\n### Response:\nNo acute process.\n\n### End"
    );
    assert_eq!(
        template::prompt("Say hi.", None),
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n\
         ### Instruction:\nSay hi.\n\n### Response:\n"
    );
    let p = Phrasings::default();
    assert!(p.cxr_to_report.len() >= 10 && p.report_to_cxr.len() >= 10);
}

#[test]
fn tokenized_samples_mask_the_prompt_and_carry_the_image() {
    let Some((tok, vocab)) = tokenizer() else {
        return;
    };
    let codes: Vec<u16> = (0..256).map(|i| (i % CODES as usize) as u16).collect();
    let c2r = template::cxr_to_report("a", codes.clone(), "Small left effusion.", "Report.");
    let t = tokenize(&c2r, &tok, &vocab).unwrap();
    let image: Vec<u32> = t
        .ids
        .iter()
        .copied()
        .filter(|&i| vocab.code(i).is_some())
        .collect();
    assert_eq!(image.len(), 256);
    assert_eq!(vocab.code(image[5]), Some(5));
    // Everything up to and including `### Response:\n` is masked; the report and `### End` are not.
    let prompt = tok.decode(&t.ids[..t.response_start], false).unwrap();
    assert!(prompt.ends_with("### Response:\n"), "{prompt:?}");
    let response = tok.decode(&t.ids[t.response_start..], false).unwrap();
    assert_eq!(response, "Small left effusion.\n\n### End");
    let mask = t.loss_mask();
    assert!(!mask[t.response_start - 1] && mask[t.response_start]);

    // Report -> CXR: the image ids are the response.
    let r2c = template::report_to_cxr("b", codes.clone(), "Small left effusion.", "Draw.");
    let t = tokenize(&r2c, &tok, &vocab).unwrap();
    let in_response = t.ids[t.response_start..]
        .iter()
        .filter(|&&i| vocab.code(i).is_some())
        .count();
    assert_eq!(in_response, 256);

    // A code outside the vocabulary is refused, naming the sample.
    let bad = template::vqa("c", vec![CODES as u16], "Is there an effusion?", "Yes.");
    let err = tokenize(&bad, &tok, &vocab).unwrap_err().to_string();
    assert!(err.contains("sample c") && err.contains("outside"), "{err}");
}

fn phantom_tree(dir: &Path, n: u64) -> (Vec<cxr_data::CxrRecord>, PathBuf) {
    let root = dir.join("ph");
    cxr_phantom::write_tree(
        &cxr_phantom::TreeOptions {
            out: root.clone(),
            n,
            size: 32,
            seed: 5,
            dicom: false,
            jpeg_quality: 90,
        },
        &|| {},
    )
    .unwrap();
    let records = open_dataset(DatasetKind::Mimic, &root)
        .unwrap()
        .records()
        .to_vec();
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    for (k, r) in records.iter().enumerate() {
        let codes: Vec<u16> = (0..256)
            .map(|i| ((i + k) % CODES as usize) as u16)
            .collect();
        cxr_vqgan::tokens::write(
            &tokens.join(cxr_vqgan::tokens::file_name(&r.image_id)),
            &codes,
            16,
        )
        .unwrap();
    }
    (records, root)
}

#[test]
fn builder_follows_the_stage_rules_and_is_deterministic() {
    let Some((tok, vocab)) = tokenizer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (records, root) = phantom_tree(dir.path(), 40);
    let findings = build::read_phantom_findings(&root.join("phantom-findings.jsonl")).unwrap();
    let phrasings = Phrasings::default();
    let text = cxr_instruct::text::embedded();
    let tokens = dir.path().join("tokens");
    // One image has model-written questions; they replace its synthetic ones.
    let llm_image = records[0].image_id.clone();
    let llm_pair = cxr_instruct::synth_vqa::QaPair {
        kind: "llm".into(),
        question: "What does the report say about the lungs?".into(),
        answer: "They are clear.".into(),
    };
    let llm_vqa = std::collections::HashMap::from([(llm_image.clone(), vec![llm_pair.clone()])]);
    let inputs = BuildInputs {
        records: &records,
        tokens: &tokens,
        findings: Some(&findings),
        llm_vqa: &llm_vqa,
        phrasings: &phrasings,
        text: &text,
        tokenizer: &tok,
        image_vocab: &vocab,
    };

    // Stage 1: every image, half each direction, three questions each, 20 % text.
    let opts = BuildOptions {
        shard_size: 50,
        ..Default::default()
    };
    let (samples, mut manifest) = build::samples(&inputs, &opts).unwrap();
    let count = |t: Task| samples.iter().filter(|s| s.task == t).count();
    assert_eq!(manifest.images_selected, 40);
    let paired = 40 - manifest.images_without_report;
    assert_eq!(count(Task::CxrToReport), paired.div_ceil(2));
    assert_eq!(count(Task::ReportToCxr), paired / 2);
    // Three questions per image, but one for the image with model-written ones.
    let llm_used = samples
        .iter()
        .any(|s| s.source == llm_image && s.task != Task::Text);
    assert_eq!(count(Task::Vqa), 3 * paired - if llm_used { 2 } else { 0 });
    if llm_used {
        let vqa: Vec<_> = samples
            .iter()
            .filter(|s| s.task == Task::Vqa && s.source == llm_image)
            .collect();
        assert_eq!(vqa.len(), 1);
        assert_eq!(vqa[0].instruction, llm_pair.question);
    }
    let cxr = count(Task::CxrToReport) + count(Task::ReportToCxr) + count(Task::Vqa);
    assert_eq!(count(Task::Text), (cxr as f64 * 0.25).round() as usize);
    // Each image is used in one direction only.
    let mut directed: Vec<&str> = samples
        .iter()
        .filter(|s| matches!(s.task, Task::CxrToReport | Task::ReportToCxr))
        .map(|s| s.source.as_str())
        .collect();
    directed.sort();
    let before = directed.len();
    directed.dedup();
    assert_eq!(directed.len(), before);
    // Stage 1 text: findings and impression.
    for s in samples.iter().filter(|s| s.task == Task::CxrToReport) {
        let r = records.iter().find(|r| r.image_id == s.source).unwrap();
        assert_eq!(
            Some(&s.response),
            r.sections().unwrap().stage1_text().as_ref()
        );
    }
    assert!(samples
        .iter()
        .filter(|s| s.task == Task::ReportToCxr)
        .any(|s| s.input.as_ref().unwrap().len() > 100));

    let tokenized = build::tokenize_all(&samples, &inputs, &mut manifest).unwrap();
    let out = dir.path().join("built");
    let shards = build::write_shards(&out, &tokenized, &mut manifest, &opts).unwrap();
    assert_eq!(shards.len(), tokenized.len().div_ceil(50));
    let (back, read) = build::read_shards(&out).unwrap();
    assert_eq!(read, tokenized);
    assert_eq!(back, manifest);
    assert!(manifest.summary().contains("cxr-to-report"));

    // Same seed, same bytes; another seed, another order.
    let again = build::samples(&inputs, &opts).unwrap().0;
    assert_eq!(again, samples);
    let other = build::samples(
        &inputs,
        &BuildOptions {
            seed: 7,
            ..opts.clone()
        },
    )
    .unwrap()
    .0;
    assert_ne!(other, samples);

    // Stage 2: frontal images of each subject's first study, impression only.
    let stage2 = BuildOptions {
        stage: Stage::Two,
        ..opts.clone()
    };
    let (s2, m2) = build::samples(&inputs, &stage2).unwrap();
    let selected = build::select(&records, Stage::Two);
    assert_eq!(m2.images_selected, selected.len());
    assert!(selected.len() < 40 && !selected.is_empty());
    assert!(selected.iter().all(|r| r.is_frontal()));
    let subjects: std::collections::HashSet<_> = selected.iter().map(|r| &r.subject_id).collect();
    assert_eq!(subjects.len(), selected.len(), "one study per subject");
    for s in s2.iter().filter(|s| s.task == Task::CxrToReport) {
        let r = records.iter().find(|r| r.image_id == s.source).unwrap();
        assert_eq!(
            Some(s.response.as_str()),
            r.sections().unwrap().stage2_text()
        );
    }

    // The length cap drops and counts.
    let mut tight = manifest.clone();
    tight.max_tokens = 300;
    tight.tasks.clear();
    let kept = build::tokenize_all(&samples, &inputs, &mut tight).unwrap();
    assert!(tight.dropped_too_long > 0);
    assert_eq!(kept.len() + tight.dropped_too_long, samples.len());
    assert!(kept.iter().all(|t| t.ids.len() <= 300));
}

#[test]
fn missing_token_files_are_counted_and_none_is_an_error() {
    let Some((tok, vocab)) = tokenizer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (records, _) = phantom_tree(dir.path(), 6);
    let empty = dir.path().join("no-tokens");
    std::fs::create_dir_all(&empty).unwrap();
    let phrasings = Phrasings::default();
    let inputs = BuildInputs {
        records: &records,
        tokens: &empty,
        findings: None,
        llm_vqa: &Default::default(),
        phrasings: &phrasings,
        text: &[],
        tokenizer: &tok,
        image_vocab: &vocab,
    };
    let err = build::samples(&inputs, &BuildOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-tokens"), "{err}");
}

/// Generation must start where training did: a drawing's prompt is the report -> CXR sample's
/// ids up to its first code (the `<` of `<image>` included).
#[test]
fn drawing_prompt_is_the_training_sample_up_to_the_first_code() {
    let Some((tok, vocab)) = tokenizer() else {
        return;
    };
    let r2c = template::report_to_cxr("a", vec![3; 16], "Small left effusion.", "Draw it.");
    let t = tokenize(&r2c, &tok, &vocab).unwrap();
    let first = t.ids.iter().position(|&i| vocab.code(i).is_some()).unwrap();
    let prompt = tok
        .encode(&template::drawing_prompt(
            "Draw it.",
            "Small left effusion.",
        ))
        .unwrap();
    assert_eq!(prompt, t.ids[..first]);
}

/// Several questions about one image in one sample: the loss covers each answer and its
/// `### End`, never a later question.
#[test]
fn vqa_turns_carry_loss_on_the_answers_only() {
    let Some((tok, vocab)) = tokenizer() else {
        return;
    };
    let mut s = template::vqa("a", vec![1; 16], "Is there an effusion?", "Yes.");
    s.turns = vec![
        ("Which side?".into(), "Left.".into()),
        ("Is there a pneumothorax?".into(), "No.".into()),
    ];
    let t = tokenize(&s, &tok, &vocab).unwrap();
    assert_eq!(t.prompt_spans.len(), 2);
    let mask = t.loss_mask();
    let carried: String = t
        .ids
        .iter()
        .zip(&mask)
        .filter(|(_, &m)| m)
        .map(|(&i, _)| tok.decode(&[i], false).unwrap())
        .collect();
    assert_eq!(carried, "Yes.\n\n### EndLeft.\n\n### EndNo.\n\n### End");
    assert_eq!(t.loss_tokens(), mask.iter().filter(|&&m| m).count());
}
