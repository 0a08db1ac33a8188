//! Plain text instructions, which keep the model's general abilities while it learns CXRs (the
//! reference mixes in databricks-dolly-15k). Readers for the two common layouts, one record per
//! line (JSONL) or one JSON array:
//! - dolly: `instruction`, `context`, `response` (`category` ignored);
//! - Alpaca: `instruction`, `input`, `output`.
//!
//! [`embedded`] is the default set: 40 instructions with answers written for this repository
//! (Apache-2.0, as the code), so that a run with nothing supplied still has text samples.

use std::path::Path;

use crate::template::{Sample, Task};
use crate::InstructError;

const EMBEDDED: &str = include_str!("../data/text-instructions.jsonl");

#[derive(serde::Deserialize)]
struct Record {
    instruction: String,
    #[serde(default, alias = "context")]
    input: Option<String>,
    #[serde(alias = "response")]
    output: String,
}

fn parse(text: &str, origin: &str) -> Result<Vec<Sample>, String> {
    let trimmed = text.trim_start();
    let records: Vec<Record> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).map_err(|e| e.to_string())?
    } else {
        trimmed
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
            .collect::<Result<_, _>>()?
    };
    if records.is_empty() {
        return Err("no instructions".into());
    }
    Ok(records
        .into_iter()
        .enumerate()
        .map(|(i, r)| Sample {
            task: Task::Text,
            source: format!("{origin}#{i}"),
            instruction: r.instruction.trim().to_string(),
            input: r
                .input
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            response: r.output.trim().to_string(),
            image: None,
            turns: Vec::new(),
        })
        .collect())
}

/// Reads a dolly or Alpaca file (JSON array or JSONL).
pub fn load(path: &Path) -> Result<Vec<Sample>, InstructError> {
    let bad = |reason: String| InstructError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let name = path
        .file_name()
        .map_or("text".into(), |n| n.to_string_lossy().into_owned());
    parse(&text, &name).map_err(bad)
}

/// The repository's own instruction set.
pub fn embedded() -> Vec<Sample> {
    parse(EMBEDDED, "embedded").expect("the embedded instruction set parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dolly_and_alpaca_layouts() {
        let dolly = r#"{"instruction": "Say hi", "context": "", "response": "Hi.", "category": "open_qa"}
{"instruction": "Summarize", "context": "A long text.", "response": "Short.", "category": "summarization"}"#;
        let s = parse(dolly, "dolly").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].input, None);
        assert_eq!(s[1].input.as_deref(), Some("A long text."));
        assert_eq!(s[1].response, "Short.");
        assert_eq!(s[1].source, "dolly#1");

        let alpaca = r#"[{"instruction": "Add", "input": "2 and 3", "output": "5"}]"#;
        let s = parse(alpaca, "alpaca").unwrap();
        assert_eq!(
            (s[0].input.as_deref(), s[0].response.as_str()),
            (Some("2 and 3"), "5")
        );
        assert!(parse("{\"instruction\": 1}", "x")
            .unwrap_err()
            .contains("line 1"));
    }

    #[test]
    fn embedded_set_is_complete() {
        let s = embedded();
        assert_eq!(s.len(), 40);
        assert!(s
            .iter()
            .all(|x| !x.instruction.is_empty() && !x.response.is_empty()));
    }
}
