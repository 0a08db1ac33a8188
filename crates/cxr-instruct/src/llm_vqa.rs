//! VQA written by a language model, as the paper had Llama-2-13b-chat do: the model reads a
//! report and returns question/answer pairs as JSON; each pair is checked against the report's
//! CheXpert labels and dropped (and counted) when it contradicts them.
//!
//! The checks, over the 13 findings (No Finding aside): a finding the answer calls present must be
//! positive or uncertain in the report; one the answer calls absent must not be positive in it.
//! Questions must end with `?`; empty answers are dropped.

use cxr_data::{ChexpertLabels, Label, Observation};

use crate::synth_vqa::QaPair;

/// The instruction given to the model for one report.
pub fn prompt(report: &str, pairs: usize) -> String {
    format!(
        "You are a radiologist. Read this chest X-ray report and write {pairs} questions a \
         doctor could ask about the image, each with its answer from the report. Do not ask \
         about prior studies, comparisons or recommendations. Reply with JSON only: a list of \
         objects with \"question\" and \"answer\", for example [{{\"question\": \"Is there a \
         pleural effusion?\", \"answer\": \"Yes, a small left pleural effusion.\"}}].\n\n\
         Report:\n{report}"
    )
}

#[derive(serde::Deserialize)]
struct RawPair {
    #[serde(alias = "Question", alias = "q")]
    question: String,
    #[serde(alias = "Answer", alias = "a")]
    answer: String,
}

/// The pairs in a model's reply: the first JSON array of `{question, answer}` objects in it.
pub fn parse_pairs(reply: &str) -> Result<Vec<(String, String)>, String> {
    let start = reply.find('[').ok_or("no JSON list in the reply")?;
    let end = reply
        .rfind(']')
        .filter(|&e| e > start)
        .ok_or("the JSON list is not closed")?;
    let raw: Vec<RawPair> = serde_json::from_str(&reply[start..=end])
        .map_err(|e| format!("not a list of pairs: {e}"))?;
    Ok(raw
        .into_iter()
        .map(|p| (p.question.trim().to_string(), p.answer.trim().to_string()))
        .collect())
}

/// Why a pair is dropped, or None when it agrees with the report.
pub fn disagreement(
    question: &str,
    answer: &str,
    answer_labels: &ChexpertLabels,
    report_labels: &ChexpertLabels,
) -> Option<String> {
    if !question.ends_with('?') {
        return Some("the question does not end with `?`".into());
    }
    if answer.is_empty() {
        return Some("empty answer".into());
    }
    for o in Observation::ALL
        .into_iter()
        .filter(|&o| o != Observation::NoFinding)
    {
        let report = report_labels.get(o);
        match answer_labels.get(o) {
            Some(Label::Positive)
                if !matches!(report, Some(Label::Positive | Label::Uncertain)) =>
            {
                return Some(format!("the answer finds {o}, the report does not"));
            }
            Some(Label::Negative) if report == Some(Label::Positive) => {
                return Some(format!("the answer rules out {o}, the report finds it"));
            }
            _ => {}
        }
    }
    None
}

/// What one report gave.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportVqa {
    pub image_id: String,
    pub pairs: Vec<QaPair>,
    /// Pairs dropped for disagreeing with the report.
    pub dropped: usize,
    /// Set when the reply held no readable JSON list.
    pub unreadable: Option<String>,
}

/// Reads the model's reply for one report and keeps the pairs that agree with its labels.
pub fn check_reply(
    image_id: &str,
    reply: &str,
    report_labels: &ChexpertLabels,
    label: &dyn Fn(&str) -> ChexpertLabels,
) -> ReportVqa {
    let mut out = ReportVqa {
        image_id: image_id.to_string(),
        ..Default::default()
    };
    match parse_pairs(reply) {
        Err(e) => {
            let head: String = reply.chars().take(200).collect();
            out.unreadable = Some(format!("{e}; the reply began: {head:?}"));
        }
        Ok(pairs) => {
            for (q, a) in pairs {
                if disagreement(&q, &a, &label(&a), report_labels).is_some() {
                    out.dropped += 1;
                } else {
                    out.pairs.push(QaPair {
                        kind: "llm".into(),
                        question: q,
                        answer: a,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_json_list_of_a_chatty_reply() {
        let reply = "Sure! Here are the pairs:\n```json\n[{\"question\": \"Is there an effusion?\", \
                     \"answer\": \"Yes, on the left.\"}, {\"Question\": \"Is the heart enlarged?\", \
                     \"Answer\": \"No.\"}]\n```";
        let pairs = parse_pairs(reply).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(
            pairs[1],
            ("Is the heart enlarged?".to_string(), "No.".to_string())
        );
        assert!(parse_pairs("no list here").is_err());
        assert!(parse_pairs("[{\"question\": 1}]")
            .unwrap_err()
            .contains("not a list"));
    }

    #[test]
    fn pairs_contradicting_the_report_are_dropped() {
        let mut report = ChexpertLabels::default();
        report.set(Observation::PleuralEffusion, Some(Label::Positive));
        report.set(Observation::Pneumonia, Some(Label::Uncertain));
        let with = |o: Observation, l: Label| {
            let mut x = ChexpertLabels::default();
            x.set(o, Some(l));
            x
        };
        let q = "Is there something?";
        let none = ChexpertLabels::default();
        assert_eq!(
            disagreement(
                q,
                "Yes.",
                &with(Observation::PleuralEffusion, Label::Positive),
                &report
            ),
            None
        );
        assert_eq!(
            disagreement(
                q,
                "Maybe.",
                &with(Observation::Pneumonia, Label::Positive),
                &report
            ),
            None
        );
        assert!(disagreement(
            q,
            "No.",
            &with(Observation::PleuralEffusion, Label::Negative),
            &report
        )
        .unwrap()
        .contains("rules out Pleural Effusion"));
        assert!(disagreement(
            q,
            "Yes.",
            &with(Observation::Pneumothorax, Label::Positive),
            &report
        )
        .unwrap()
        .contains("finds Pneumothorax"));
        assert!(disagreement("Describe it", "Fine.", &none, &report).is_some());
        assert!(disagreement(q, "", &none, &report).is_some());
    }

    #[test]
    fn check_reply_counts_kept_dropped_and_unreadable() {
        let mut report = ChexpertLabels::default();
        report.set(Observation::Cardiomegaly, Some(Label::Positive));
        let label = |a: &str| {
            let mut x = ChexpertLabels::default();
            if a.contains("enlarged") {
                x.set(Observation::Cardiomegaly, Some(Label::Positive));
            }
            if a.contains("pneumothorax") {
                x.set(Observation::Pneumothorax, Some(Label::Positive));
            }
            x
        };
        let reply = r#"[{"question": "Is the heart big?", "answer": "Yes, it is enlarged."},
                        {"question": "Any air?", "answer": "Yes, a pneumothorax."}]"#;
        let r = check_reply("img", reply, &report, &label);
        assert_eq!(
            (r.pairs.len(), r.dropped, r.unreadable.is_none()),
            (1, 1, true)
        );
        assert_eq!(r.pairs[0].kind, "llm");
        let r = check_reply("img", "I cannot help with that.", &report, &label);
        assert!(r.unreadable.is_some() && r.pairs.is_empty());
    }
}
