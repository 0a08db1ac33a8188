//! `llm-cxr dataset`: what llm-cxr reads from a dataset, before any training.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;

use cxr_data::{open_dataset, CxrDataset, DatasetKind, Label, Observation};

#[derive(clap::Args)]
pub struct Args {
    /// Layout: mimic (MIMIC-CXR-JPG folder or a phantom tree), open-i (Open-i folder or R2Gen
    /// annotation.json), csv (image,report[,labels] table).
    #[arg(long, value_enum)]
    pub kind: DatasetKind,
    /// The dataset folder, or the CSV / annotation.json file.
    pub path: PathBuf,
    /// Also decode every image through the loader and report the ones that fail.
    #[arg(long)]
    pub check_images: bool,
}

/// Counts that say whether a dataset is usable for LLM-CXR's two stages.
#[derive(serde::Serialize, Default)]
pub struct DatasetSummary {
    pub name: String,
    pub images: usize,
    pub with_report: usize,
    /// Reports with an IMPRESSION: section (what LLM-CXR keeps).
    pub parseable_reports: usize,
    pub splits: BTreeMap<String, usize>,
    pub views: BTreeMap<String, usize>,
    /// Stage 1 pool: train split, parseable report (all views).
    pub stage1_pool: usize,
    /// Stage 2 pool: train split, PA/AP, earliest study per subject, impression present.
    pub stage2_pool: usize,
    pub positive_labels: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable_images: Option<usize>,
}

pub fn summarise(ds: &dyn CxrDataset) -> DatasetSummary {
    let mut s = DatasetSummary {
        name: ds.name().to_string(),
        images: ds.records().len(),
        ..Default::default()
    };
    let mut first_study: BTreeMap<String, String> = BTreeMap::new();
    for r in ds.records() {
        if let (Some(subject), Some(study)) = (&r.subject_id, &r.study_id) {
            // Study ids grow with time in MIMIC and in phantoms, so the smallest is the earliest.
            let e = first_study
                .entry(subject.clone())
                .or_insert_with(|| study.clone());
            if study < e {
                *e = study.clone();
            }
        }
    }
    for r in ds.records() {
        let sections = r.sections();
        s.with_report += r.report.is_some() as usize;
        let parseable = sections.as_ref().and_then(|x| x.stage1_text()).is_some();
        s.parseable_reports += parseable as usize;
        *s.splits
            .entry(r.split.map_or("none", |x| x.as_str()).to_string())
            .or_default() += 1;
        *s.views
            .entry(r.view.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
        let train = r.split == Some(cxr_data::Split::Train);
        s.stage1_pool += (train && parseable) as usize;
        let earliest = match (&r.subject_id, &r.study_id) {
            (Some(subject), Some(study)) => first_study.get(subject) == Some(study),
            _ => true,
        };
        s.stage2_pool += (train && parseable && r.is_frontal() && earliest) as usize;
        if let Some(labels) = r.labels {
            for o in Observation::ALL {
                if labels.get(o) == Some(Label::Positive) {
                    *s.positive_labels.entry(o.name().to_string()).or_default() += 1;
                }
            }
        }
    }
    s
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ds = open_dataset(args.kind, &args.path)?;
    let mut summary = summarise(ds.as_ref());
    if args.check_images {
        let bar = super::progress(ds.records().len() as u64, "images");
        let failures: Vec<String> = ds
            .records()
            .par_iter()
            .filter_map(|r| {
                let res = cxr_image::load_image(&r.image_path);
                bar.inc(1);
                res.err().map(|e| e.to_string())
            })
            .collect();
        bar.finish_and_clear();
        for f in failures.iter().take(20) {
            eprintln!("error: {f}");
        }
        summary.unreadable_images = Some(failures.len());
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
