//! Writes a phantom dataset as a MIMIC-CXR-JPG-like tree that [`cxr_data::datasets::MimicCxrJpg`]
//! reads back:
//!
//! ```text
//! OUT/files/p10/p10000997/s50000003/<dicom_id>.jpg   (and .dcm with --dicom)
//! OUT/files/p10/p10000997/s50000003.txt              the report
//! OUT/mimic-cxr-2.0.0-{chexpert,split,metadata}.csv
//! OUT/phantom-findings.jsonl                          structured ground truth per image
//! ```
//!
//! Subjects have one to three studies with increasing StudyDate; each study holds one frontal
//! image. Splits are drawn per subject (80 / 10 / 10). Every file is written to a temporary name
//! and renamed, and images already present are not rendered again, so a killed run resumes.

use std::path::{Path, PathBuf};

use rand::Rng;
use rayon::prelude::*;

use cxr_data::datasets::mimic::study_dir;
use cxr_data::{Observation, Split};
use cxr_image::dicom::{encode_dicom, DicomWriteOptions};

use crate::{rng_for, PhantomSpec};

/// What to write.
#[derive(Debug, Clone)]
pub struct TreeOptions {
    pub out: PathBuf,
    pub n: u64,
    pub size: u32,
    pub seed: u64,
    /// Also write a DICOM (12-bit MONOCHROME2, synthetic patient tags) beside each JPEG.
    pub dicom: bool,
    pub jpeg_quality: u8,
}

impl TreeOptions {
    /// JPEG quality unless asked otherwise: high enough that compression does not blur findings.
    pub const DEFAULT_JPEG_QUALITY: u8 = 95;
}

/// What was written.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TreeSummary {
    pub images: u64,
    pub rendered: u64,
    pub reused: u64,
    pub subjects: u64,
    pub train: u64,
    pub validate: u64,
    pub test: u64,
    /// How many images are positive (1) for each observation.
    pub positives: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot encode image: {message}")]
    Encode { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TreeError> {
    cxr_data::write_atomic(path, bytes).map_err(io_err(path))
}

/// Where phantom `index` lives in the tree.
#[derive(Debug, Clone)]
pub struct Placement {
    pub index: u64,
    pub subject_id: String,
    pub study_id: String,
    pub dicom_id: String,
    pub study_day: u32,
    pub split: Split,
}

/// Assigns images to subjects and studies: deterministic from the seed alone.
pub fn placements(seed: u64, n: u64) -> Vec<Placement> {
    let mut rng = rng_for(seed, u64::MAX / 4, 2);
    let mut out = Vec::with_capacity(n as usize);
    let mut subject = 0u64;
    while (out.len() as u64) < n {
        subject += 1;
        let studies = match rng.random_range(0..10) {
            0..=6 => 1,
            7..=8 => 2,
            _ => 3,
        };
        let split = match rng.random_range(0..10) {
            0..=7 => Split::Train,
            8 => Split::Validate,
            _ => Split::Test,
        };
        let subject_id = format!("{}", 10_000_000 + subject * 997);
        let mut day = rng.random_range(0..3000u32);
        for _ in 0..studies {
            if out.len() as u64 == n {
                break;
            }
            let index = out.len() as u64;
            let id: [u32; 5] = rng.random();
            out.push(Placement {
                index,
                subject_id: subject_id.clone(),
                study_id: format!("{}", 50_000_000 + index),
                dicom_id: id
                    .iter()
                    .map(|x| format!("{x:08x}"))
                    .collect::<Vec<_>>()
                    .join("-"),
                study_day: day,
                split,
            });
            day += rng.random_range(1..400);
        }
    }
    out
}

/// A date string (YYYYMMDD) for a study day, in a fictitious 2150s like MIMIC's shifted dates.
fn study_date(day: u32) -> String {
    let (y, rest) = (2150 + day / 360, day % 360);
    format!("{y}{:02}{:02}", rest / 30 + 1, rest % 30 + 1)
}

/// Generates the dataset, calling `tick` once per image (for a progress bar).
pub fn write_tree(opts: &TreeOptions, tick: &(dyn Fn() + Sync)) -> Result<TreeSummary, TreeError> {
    std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
    let places = placements(opts.seed, opts.n);
    let specs: Vec<(Placement, PhantomSpec, bool)> = places
        .into_par_iter()
        .map(|p| -> Result<_, TreeError> {
            let spec = PhantomSpec::sample(opts.seed, p.index);
            let dir = study_dir(&opts.out, &p.subject_id, &p.study_id);
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let jpg = dir.join(format!("{}.jpg", p.dicom_id));
            let dcm = dir.join(format!("{}.dcm", p.dicom_id));
            let report = dir.with_extension("txt");
            let done = jpg.is_file() && report.is_file() && (!opts.dicom || dcm.is_file());
            if !done {
                let img = spec.render(opts.size);
                let mut bytes = Vec::new();
                let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(
                    &mut bytes,
                    opts.jpeg_quality,
                );
                img.to_luma8()
                    .write_with_encoder(enc)
                    .map_err(|e| TreeError::Encode {
                        path: jpg.clone(),
                        message: e.to_string(),
                    })?;
                write_atomic(&jpg, &bytes)?;
                if opts.dicom {
                    let dicom = encode_dicom(
                        &img,
                        &DicomWriteOptions {
                            patient: Some((
                                format!("PHANTOM^{}", p.subject_id),
                                p.subject_id.clone(),
                            )),
                            view_position: Some(spec.view.as_str().into()),
                            ..Default::default()
                        },
                    )
                    .map_err(|e| TreeError::Encode {
                        path: dcm.clone(),
                        message: e.to_string(),
                    })?;
                    write_atomic(&dcm, &dicom)?;
                }
                write_atomic(&report, spec.report.as_bytes())?;
            }
            tick();
            Ok((p, spec, !done))
        })
        .collect::<Result<_, _>>()?;

    let mut summary = TreeSummary {
        images: specs.len() as u64,
        ..Default::default()
    };
    let mut split_csv = String::from("dicom_id,study_id,subject_id,split\n");
    let mut meta_csv =
        String::from("dicom_id,subject_id,study_id,ViewPosition,Rows,Columns,StudyDate\n");
    // MIMIC's chexpert.csv lists observations alphabetically.
    let mut alpha = Observation::ALL.to_vec();
    alpha.sort_by_key(|o| o.name());
    let mut chexpert_csv = format!(
        "subject_id,study_id,{}\n",
        alpha.iter().map(|o| o.name()).collect::<Vec<_>>().join(",")
    );
    let mut findings_jsonl = String::new();
    let mut positives = [0u64; 14];
    let mut subjects = std::collections::BTreeSet::new();
    for (p, spec, rendered) in &specs {
        if *rendered {
            summary.rendered += 1;
        } else {
            summary.reused += 1;
        }
        subjects.insert(p.subject_id.clone());
        match p.split {
            Split::Train => summary.train += 1,
            Split::Validate => summary.validate += 1,
            Split::Test => summary.test += 1,
        }
        split_csv += &format!(
            "{},{},{},{}\n",
            p.dicom_id,
            p.study_id,
            p.subject_id,
            p.split.as_str()
        );
        meta_csv += &format!(
            "{},{},{},{},{},{},{}\n",
            p.dicom_id,
            p.subject_id,
            p.study_id,
            spec.view.as_str(),
            opts.size,
            opts.size,
            study_date(p.study_day)
        );
        let cells = spec.labels.to_csv_cells();
        chexpert_csv += &format!(
            "{},{},{}\n",
            p.subject_id,
            p.study_id,
            alpha
                .iter()
                .map(|o| cells[o.index()])
                .collect::<Vec<_>>()
                .join(",")
        );
        for o in Observation::ALL {
            if spec.labels.get(o) == Some(cxr_data::Label::Positive) {
                positives[o.index()] += 1;
            }
        }
        findings_jsonl += &serde_json::to_string(&serde_json::json!({
            "dicom_id": p.dicom_id,
            "subject_id": p.subject_id,
            "study_id": p.study_id,
            "view": spec.view.as_str(),
            "findings": spec.findings,
        }))
        .expect("findings serialise");
        findings_jsonl.push('\n');
    }
    summary.subjects = subjects.len() as u64;
    summary.positives = Observation::ALL
        .iter()
        .map(|o| (o.name().to_string(), positives[o.index()]))
        .collect();
    for (name, text) in [
        ("mimic-cxr-2.0.0-split.csv", &split_csv),
        ("mimic-cxr-2.0.0-metadata.csv", &meta_csv),
        ("mimic-cxr-2.0.0-chexpert.csv", &chexpert_csv),
        ("phantom-findings.jsonl", &findings_jsonl),
    ] {
        write_atomic(&opts.out.join(name), text.as_bytes())?;
    }
    Ok(summary)
}
