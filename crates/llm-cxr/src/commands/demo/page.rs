//! The main job's page, index.html, drawn from the results its stages left.

use std::path::Path;

use super::heldout::{read_generated_reports, Judged, TestSet};
use super::profile::Profile;
use super::scores::{fmt3, CurvePoint, Measure};
use super::stages::{shown, Done};
use crate::commands::write_atomic;
use crate::html::{Cell, Page};

/// What the page shows.
pub struct Report<'a> {
    pub profile: &'a Profile,
    pub out: &'a Path,
    pub curve: &'a [CurvePoint],
    pub stages: &'a [Done],
    pub plain: &'a [(String, String, String)],
    pub test: &'a TestSet,
    pub reconstructions: &'a Path,
    pub judge_check: &'a Judged,
    pub vqgan: &'a cxr_eval::VqganEvaluation,
    /// The last evaluation's folder (its drawings and reports) and its results.
    pub last_eval: &'a Path,
    pub final_evaluation: &'a cxr_eval::Evaluations,
}

/// index.html: targets, the score curve, losses, VQ-GAN reconstructions, plain instructions,
/// the stages with their command lines, and the final evaluation with sample cases.
pub fn page(r: &Report) -> anyhow::Result<String> {
    let last = r.curve.last().expect("at least one point");
    let mut page = Page::new("llm-cxr demo: reading and drawing chest X-rays");
    let total: f64 = r.stages.iter().map(|d| d.record.seconds).sum();
    let mut md = format!(
        "Profile **{}**: phantom CXRs with reports, the classifier and VQ-GAN trained on them, \
         SmolLM2-135M-Instruct fine-tuned for {} steps, evaluated on {} held-out (test-split) \
         phantoms. Stage time in all: {:.1} min.\n\n## Targets\n\n| measure | target | at step {} |\n|---|---|---|\n",
        r.profile.name,
        last.step,
        r.profile.eval_images,
        total / 60.0,
        last.step
    );
    for m in Measure::ALL {
        let (what, target, v) = (m.label(), m.target(), last.get(m));
        let verdict = match v {
            Some(v) if v >= target => "met",
            Some(_) => "**not met**",
            None => "not measured",
        };
        md += &format!(
            "| {what} | >= {target:.2} | {} ({verdict}); images shuffled: {} |\n",
            fmt3(v),
            fmt3(last.get_shuffled(m))
        );
    }
    md += &format!(
        "\nSide and severity are judged by matching each drawn image to templates rendered by the \
         phantom model for every alternative (right / left / bilateral, mild / moderate / \
         severe); the same judge on the real held-out phantoms agrees with their truth in {} of \
         {} cases ({}), which bounds what it can tell.\n",
        r.judge_check.obeyed,
        r.judge_check.judged,
        fmt3(r.judge_check.rate)
    );
    page.markdown(&md);

    let series: Vec<(&str, Vec<(f64, f64)>)> = Measure::ALL
        .iter()
        .map(|&m| {
            (
                m.key(),
                r.curve
                    .iter()
                    .filter_map(|p| Some((p.train_seconds / 60.0, p.get(m)?)))
                    .collect(),
            )
        })
        .collect();
    if r.curve.len() > 1 {
        let png = crate::plot::line_chart(
            "Held-out scores against fine-tuning time",
            "minutes of fine-tuning",
            "score",
            &series,
            false,
        )?;
        write_atomic(&r.out.join("score-curve.png"), &png)?;
        page.figure(&png, 800, "Held-out scores against fine-tuning time");
    }
    let mut md = String::from(
        "Each score, then in brackets the same score with the images shuffled among the cases \
         (each case's outputs against the next case's truth): the gap is what the model takes \
         from the image.\n\n\
         | step | minutes of fine-tuning | report micro-F1 | image micro-AUROC | VQA yes/no accuracy | side and severity |\n|---|---|---|---|---|---|\n",
    );
    for p in r.curve {
        md += &format!(
            "| {} | {:.1} | {} | {} | {} | {} |\n",
            p.step,
            p.train_seconds / 60.0,
            p.both(Measure::ReportF1),
            p.both(Measure::ImageAuroc),
            p.both(Measure::VqaAccuracy),
            p.both(Measure::SideSeverity)
        );
    }
    page.markdown(&md);

    page.markdown("## Training");
    for (file, caption) in [
        ("lm/loss-curve.png", "Fine-tuning loss (response tokens)"),
        ("vqgan/loss-curve.png", "VQ-GAN losses"),
        (
            "vqgan/reconstructions.png",
            "VQ-GAN: inputs and their reconstructions",
        ),
    ] {
        if let Ok(png) = std::fs::read(r.out.join(file)) {
            page.figure(&png, 800, caption);
        }
    }
    page.markdown(&format!(
        "VQ-GAN on the held-out phantoms: PSNR {:.2} dB, SSIM {:.3}, classifier label agreement {}.",
        r.vqgan.psnr_db,
        r.vqgan.ssim,
        fmt3(r.vqgan.label_agreement)
    ));

    page.markdown(&format!(
        "## Held-out cases at step {}\n\nEach test image beside its VQ-GAN reconstruction and the \
         image drawn from its report; the report written for the image beside the truth.",
        last.step
    ));
    let generated = read_generated_reports(&r.last_eval.join("reports.csv")).unwrap_or_default();
    let thumb = |path: &Path| match crate::html::thumbnail(path, 128) {
        Ok(bytes) => Cell::Png { bytes, width: 128 },
        Err(e) => Cell::Text(format!("{}: {e}", path.display())),
    };
    let rows: Vec<Vec<Cell>> = (0..r.test.images.len().min(8))
        .map(|i| {
            let stem = cxr_vqgan::tokens::file_name(&r.test.image_ids[i]);
            let stem = stem.trim_end_matches(".npy");
            vec![
                thumb(&r.test.images[i]),
                thumb(&r.reconstructions.join(format!("{stem}.png"))),
                thumb(&r.last_eval.join("draws").join(format!("draw-{i}-0.png"))),
                Cell::Text(r.test.reports[i].clone()),
                Cell::Text(generated.get(i).cloned().unwrap_or_default()),
            ]
        })
        .collect();
    page.table(
        &[
            "image",
            "reconstruction",
            "drawn from its report",
            "true report",
            "generated report",
        ],
        &rows,
    );

    page.markdown("## Plain instructions, before and after fine-tuning");
    let rows: Vec<Vec<Cell>> = r
        .plain
        .iter()
        .map(|(q, b, t)| {
            vec![
                Cell::Text(q.clone()),
                Cell::Text(b.clone()),
                Cell::Text(t.clone()),
            ]
        })
        .collect();
    page.table(&["instruction", "base model", "fine-tuned"], &rows);

    page.markdown("## Stages\n\nEach is an `llm-cxr` command line; rerun any of them alone.");
    let rows: Vec<Vec<Cell>> = r
        .stages
        .iter()
        .map(|d| {
            vec![
                Cell::Text(d.name.clone()),
                Cell::Text(format!(
                    "{:.1}{}",
                    d.record.seconds,
                    if d.earlier { " (earlier run)" } else { "" }
                )),
                Cell::Text(format!("llm-cxr {}", shown(&d.record.command, 300))),
            ]
        })
        .collect();
    page.table(&["stage", "seconds", "command"], &rows);

    // The last evaluation's tables and sample cases, as `eval all` showed them.
    page.markdown("# Final evaluation");
    crate::commands::eval::render(&mut page, r.final_evaluation)?;
    Ok(page.finish())
}
