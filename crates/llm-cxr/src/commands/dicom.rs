//! `llm-cxr dicom inspect`: technical tags of a DICOM, and which patient tags it holds, never
//! their values.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Show how the pixels are stored (transfer syntax, photometric interpretation, bit depth,
    /// rescale, window) and list the PHI tags present by name only. No patient value is printed.
    Inspect {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One JSON object per file instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let Command::Inspect { files, json } = cmd;
    for path in files {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let s = cxr_image::dicom::inspect_dicom(&bytes, &path)?;
        if json {
            let technical: serde_json::Map<String, serde_json::Value> = s
                .technical
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "file": path.display().to_string(),
                    "transfer_syntax": {"uid": s.transfer_syntax_uid, "name": s.transfer_syntax_name},
                    "decodable": s.decodable,
                    "technical": technical,
                    "voi_lut_sequence": s.has_voi_lut_sequence,
                    "phi_tags_present": s.phi_present,
                })
            );
        } else {
            println!("{}", path.display());
            println!(
                "  transfer syntax   {} ({})",
                s.transfer_syntax_name, s.transfer_syntax_uid
            );
            println!(
                "  decodable here    {}",
                if s.decodable { "yes" } else { "no" }
            );
            for (k, v) in &s.technical {
                println!("  {k:<25} {v}");
            }
            if s.has_voi_lut_sequence {
                println!("  VOILUTSequence            present");
            }
            if s.phi_present.is_empty() {
                println!("  PHI tags present  none");
            } else {
                println!(
                    "  PHI tags present  {} (values not shown)",
                    s.phi_present.join(", ")
                );
            }
        }
    }
    Ok(())
}
