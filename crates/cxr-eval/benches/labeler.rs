//! Report labeler throughput on one core (`cargo bench -p cxr-eval`), printed as JSON.
//!
//! Labels 20,000 whole phantom reports (header, FINDINGS, IMPRESSION; about 600 characters, as
//! MIMIC reports) on one thread. The reference CheXpert labeler (NegBio + BLLIP parser) cannot be
//! installed offline here, so the ratio is against the target of 5,000 reports/s on one
//! core; the original labeler is known to run at tens of reports per second.

use std::path::PathBuf;
use std::time::Instant;

use cxr_eval::ReportLabeler;
use cxr_phantom::PhantomSpec;

fn main() {
    let dir = std::env::var("LLMCXR_CHEXPERT_PHRASES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/data/chexpert-labeler-phrases")
        });
    let labeler = match ReportLabeler::from_dir(&dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIP: {e} (set LLMCXR_CHEXPERT_PHRASES)");
            return;
        }
    };
    let reports: Vec<String> = (0..20_000)
        .map(|i| PhantomSpec::sample(3, i).report)
        .collect();
    let chars = reports.iter().map(String::len).sum::<usize>() / reports.len();
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for r in &reports {
            std::hint::black_box(labeler.label(r));
        }
        rates.push(reports.len() as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[1];
    println!(
        "{}",
        serde_json::json!({
            "bench": "report_labeler",
            "threads": 1,
            "reports": reports.len(),
            "mean_report_chars": chars,
            "reports_per_s": median,
            "samples": rates,
            "target_reports_per_s": 5000.0,
            "ratio_vs_target": median / 5000.0,
        })
    );
}
