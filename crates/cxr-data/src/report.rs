//! Radiology report sections, split as LLM-CXR does (brief section 3): the report's lines are
//! joined, then cut at the exact upper-case headers `FINDINGS:` and `IMPRESSION:`. A report
//! without an `IMPRESSION:` section does not parse and is dropped from instruction data.

/// The two sections LLM-CXR trains on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportSections {
    pub findings: Option<String>,
    pub impression: Option<String>,
}

fn squash(s: &str) -> Option<String> {
    let t = s.split_whitespace().collect::<Vec<_>>().join(" ");
    (!t.is_empty()).then_some(t)
}

impl ReportSections {
    /// Splits a free-text report. Text before `FINDINGS:` (history, technique, comparison) is
    /// discarded; findings run up to `IMPRESSION:` when both are present.
    pub fn parse(report: &str) -> Self {
        let text = report.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        let (before_impression, impression) = match text.rfind("IMPRESSION:") {
            Some(i) => (&text[..i], squash(&text[i + "IMPRESSION:".len()..])),
            None => (text.as_str(), None),
        };
        let findings = before_impression
            .rfind("FINDINGS:")
            .and_then(|i| squash(&before_impression[i + "FINDINGS:".len()..]));
        Self {
            findings,
            impression,
        }
    }

    /// Builds a report text back from sections, in the MIMIC layout.
    pub fn to_report(&self) -> String {
        let mut out = String::new();
        if let Some(f) = &self.findings {
            out.push_str("FINDINGS: ");
            out.push_str(f);
            out.push('\n');
        }
        if let Some(i) = &self.impression {
            out.push_str("IMPRESSION: ");
            out.push_str(i);
            out.push('\n');
        }
        out
    }

    /// Stage-1 text: findings followed by impression, or the impression alone.
    pub fn stage1_text(&self) -> Option<String> {
        let impression = self.impression.as_ref()?;
        Some(match &self.findings {
            Some(f) => format!("{f} {impression}"),
            None => impression.clone(),
        })
    }

    /// Stage-2 text: the impression only.
    pub fn stage2_text(&self) -> Option<&str> {
        self.impression.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_mimic_style_report() {
        let r = "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  cough\n\n FINDINGS: \n \n The lungs are clear.  No\n pleural effusion.\n \n IMPRESSION: \n \n No acute process.\n";
        let s = ReportSections::parse(r);
        assert_eq!(
            s.findings.as_deref(),
            Some("The lungs are clear. No pleural effusion.")
        );
        assert_eq!(s.impression.as_deref(), Some("No acute process."));
        assert_eq!(
            s.stage1_text().as_deref(),
            Some("The lungs are clear. No pleural effusion. No acute process.")
        );
        assert_eq!(ReportSections::parse(&s.to_report()), s);
    }

    #[test]
    fn impression_only_and_unparseable() {
        let s = ReportSections::parse("IMPRESSION: Small left effusion.");
        assert_eq!(s.findings, None);
        assert_eq!(s.stage1_text().as_deref(), Some("Small left effusion."));
        let s = ReportSections::parse("FINDINGS: Clear lungs.");
        assert_eq!(
            s.stage1_text(),
            None,
            "no impression: dropped as the reference does"
        );
        // Headers are matched exactly (upper case with colon), as the reference does.
        assert_eq!(ReportSections::parse("Impression: clear").impression, None);
    }
}
