//! LLM-CXR's instruction template (`training/consts.py` of the reference), the four tasks, and
//! tokenization with the completion-only loss mask.
//!
//! ```text
//! {INTRO}
//!
//! ### Instruction:
//! {instruction}
//!
//! Input:
//! {input}
//!
//! ### Response:
//! {response}
//!
//! ### End
//! ```
//!
//! `Input:` has no `###`; without an input the `Input:` paragraph is left out. An image stands in
//! the text as `<image>`, whose `image` token is replaced by the image's ids when tokenizing.

use cxr_lm::image_vocab::{END_KEY, IMAGE_PLACEHOLDER, INSTRUCTION_KEY, INTRO, RESPONSE_KEY_NL};
use cxr_lm::{ImageVocab, TextTokenizer};

use crate::InstructError;

/// The four tasks LLM-CXR is tuned on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// CXR -> report: the image is the input, the report the response.
    CxrToReport,
    /// Report -> CXR: the report is the input, the image the response.
    ReportToCxr,
    /// A question about an image: the question is the instruction, the image the input.
    Vqa,
    /// A plain text instruction.
    Text,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::CxrToReport, Task::ReportToCxr, Task::Vqa, Task::Text];

    pub fn name(self) -> &'static str {
        match self {
            Task::CxrToReport => "cxr-to-report",
            Task::ReportToCxr => "report-to-cxr",
            Task::Vqa => "vqa",
            Task::Text => "text",
        }
    }
}

/// One instruction sample, before tokenization.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub task: Task,
    /// Where it came from (an image id, or a text set and index).
    pub source: String,
    pub instruction: String,
    pub input: Option<String>,
    pub response: String,
    /// VQ codes of the image that `<image>` stands for (in the input or the response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Vec<u16>>,
    /// Further (instruction, response) turns on the same input, each in the template's
    /// `### Instruction:` / `### Response:` / `### End` form after the first: several questions
    /// about one image read its codes once. Their instructions carry no loss.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<(String, String)>,
}

/// A report -> CXR prompt up to the first code: the prompt and the `<` that opens `<image>`
/// (trained as `### Response:\n`, `<`, codes, `>`), so that a drawing's first code is
/// generated where training put it.
pub fn drawing_prompt(instruction: &str, report: &str) -> String {
    let open = &IMAGE_PLACEHOLDER[..1];
    format!("{}{open}", prompt(instruction, Some(report)))
}

/// The prompt: everything up to and including `### Response:\n`.
pub fn prompt(instruction: &str, input: Option<&str>) -> String {
    match input {
        Some(x) => format!(
            "{INTRO}\n\n{INSTRUCTION_KEY}\n{instruction}\n\nInput:\n{x}\n\n{RESPONSE_KEY_NL}"
        ),
        None => format!("{INTRO}\n\n{INSTRUCTION_KEY}\n{instruction}\n\n{RESPONSE_KEY_NL}"),
    }
}

impl Sample {
    /// The whole training text: prompt, response, `### End`.
    pub fn text(&self) -> String {
        let mut text = format!(
            "{}{}\n\n{END_KEY}",
            prompt(&self.instruction, self.input.as_deref()),
            self.response
        );
        for (instruction, response) in &self.turns {
            text += &format!(
                "\n\n{INSTRUCTION_KEY}\n{instruction}\n\n{RESPONSE_KEY_NL}{response}\n\n{END_KEY}"
            );
        }
        text
    }
}

/// A tokenized sample: the loss covers `ids[response_start..]` but the `prompt_spans`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tokenized {
    pub task: Task,
    pub source: String,
    pub ids: Vec<u32>,
    /// One past the first `### Response:\n` token: the completion-only mask (as the reference's
    /// `DataCollatorForCompletionOnlyLM`) hides every position before it.
    pub response_start: usize,
    /// Later spans `[start, end)` without loss: the instructions of further turns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt_spans: Vec<(usize, usize)>,
}

impl Tokenized {
    /// Per position: true where the loss counts.
    pub fn loss_mask(&self) -> Vec<bool> {
        (0..self.ids.len())
            .map(|i| {
                i >= self.response_start && !self.prompt_spans.iter().any(|&(a, b)| a <= i && i < b)
            })
            .collect()
    }

    /// Tokens that carry loss.
    pub fn loss_tokens(&self) -> usize {
        self.loss_mask().iter().filter(|&&m| m).count()
    }
}

/// Tokenizes a sample with the image vocabulary's injection of its codes.
pub fn tokenize(
    sample: &Sample,
    tokenizer: &TextTokenizer,
    vocab: &ImageVocab,
) -> Result<Tokenized, InstructError> {
    let text = sample.text();
    let placeholders = text.matches(IMAGE_PLACEHOLDER).count();
    let ids = match &sample.image {
        Some(codes) => {
            if placeholders != 1 {
                return Err(InstructError::Sample {
                    source_id: sample.source.clone(),
                    reason: format!("has an image but {placeholders} `<image>` in its text"),
                });
            }
            if let Some(&c) = codes.iter().find(|&&c| c as u32 >= vocab.codes) {
                return Err(InstructError::Sample {
                    source_id: sample.source.clone(),
                    reason: format!("image code {c} is outside the {} codes", vocab.codes),
                });
            }
            let codes: Vec<u32> = codes.iter().map(|&c| c as u32).collect();
            vocab.encode_with_image(tokenizer, &text, &codes)?
        }
        None => tokenizer.encode(&text)?,
    };
    let key = tokenizer
        .token_id(RESPONSE_KEY_NL)
        .ok_or_else(|| InstructError::Sample {
            source_id: sample.source.clone(),
            reason: "the tokenizer has no `### Response:\\n` token (extend it with the image vocabulary first)".into(),
        })?;
    let bad = |reason: &str| InstructError::Sample {
        source_id: sample.source.clone(),
        reason: reason.to_string(),
    };
    let keys: Vec<usize> = (0..ids.len()).filter(|&p| ids[p] == key).collect();
    let response_start = keys
        .first()
        .map(|p| p + 1)
        .ok_or_else(|| bad("no `### Response:\\n` token after tokenizing"))?;
    if !sample.turns.is_empty() && keys.len() != 1 + sample.turns.len() {
        return Err(bad(&format!(
            "has {} turns but {} `### Response:\\n` tokens",
            1 + sample.turns.len(),
            keys.len()
        )));
    }
    // A later turn's instruction runs from the token after the previous `### End` to its own
    // response key.
    let end = tokenizer
        .token_id(END_KEY)
        .ok_or_else(|| bad("the tokenizer has no `### End` token"))?;
    let mut prompt_spans = Vec::new();
    for &k in keys.iter().skip(1).take(sample.turns.len()) {
        let start = (0..k)
            .rev()
            .find(|&p| ids[p] == end)
            .ok_or_else(|| bad("a later turn without `### End` before it"))?;
        prompt_spans.push((start + 1, k + 1));
    }
    Ok(Tokenized {
        task: sample.task,
        source: sample.source.clone(),
        ids,
        response_start,
        prompt_spans,
    })
}

/// Instruction phrasings for the two image tasks; one is drawn per sample.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Phrasings {
    pub cxr_to_report: Vec<String>,
    pub report_to_cxr: Vec<String>,
}

impl Default for Phrasings {
    /// Our own phrasings (twelve per direction), not the paper's: load those with
    /// [`Phrasings::from_file`] to reproduce it.
    fn default() -> Self {
        let own = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Phrasings {
            cxr_to_report: own(&[
                "Write the radiology report for this chest X-ray.",
                "Describe the findings and the impression of the chest radiograph below.",
                "Read this chest X-ray and report what you see.",
                "Produce a free-text radiology report for the given chest radiograph.",
                "You are a radiologist. Report on the chest X-ray provided.",
                "Interpret the following chest X-ray and write your report.",
                "Give the findings and impression for this frontal chest image.",
                "What would a radiologist write about this chest X-ray?",
                "Summarize the chest radiograph below as a radiology report.",
                "Generate the report that belongs to this chest X-ray image.",
                "Examine this chest film and dictate a report.",
                "Provide a radiology report describing the chest X-ray input.",
            ]),
            report_to_cxr: own(&[
                "Draw the chest X-ray that this radiology report describes.",
                "Generate a chest radiograph matching the report below.",
                "Create a chest X-ray image consistent with these findings.",
                "Produce the chest X-ray described by the following report.",
                "Synthesize a frontal chest radiograph for this report.",
                "Render a chest X-ray that shows what the report says.",
                "Make a chest X-ray image from the radiology report given.",
                "Generate the image of a chest X-ray with the findings below.",
                "Given this radiology report, generate the corresponding chest X-ray.",
                "Turn the following report into a chest radiograph.",
                "Create the chest film that a radiologist would describe this way.",
                "Output a chest X-ray image that fits the report provided.",
            ]),
        }
    }
}

impl Phrasings {
    /// Reads a JSON file `{"cxr_to_report": [...], "report_to_cxr": [...]}`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, InstructError> {
        let bad = |reason: String| InstructError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let p: Phrasings = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if p.cxr_to_report.is_empty() || p.report_to_cxr.is_empty() {
            return Err(bad("each direction needs at least one phrasing".into()));
        }
        Ok(p)
    }
}

/// The CXR -> report sample of an image.
pub fn cxr_to_report(source: &str, codes: Vec<u16>, report: &str, instruction: &str) -> Sample {
    Sample {
        task: Task::CxrToReport,
        source: source.to_string(),
        instruction: instruction.to_string(),
        input: Some(IMAGE_PLACEHOLDER.to_string()),
        response: report.to_string(),
        image: Some(codes),
        turns: Vec::new(),
    }
}

/// The report -> CXR sample of an image.
pub fn report_to_cxr(source: &str, codes: Vec<u16>, report: &str, instruction: &str) -> Sample {
    Sample {
        task: Task::ReportToCxr,
        source: source.to_string(),
        instruction: instruction.to_string(),
        input: Some(report.to_string()),
        response: IMAGE_PLACEHOLDER.to_string(),
        image: Some(codes),
        turns: Vec::new(),
    }
}

/// A question about an image.
pub fn vqa(source: &str, codes: Vec<u16>, question: &str, answer: &str) -> Sample {
    Sample {
        task: Task::Vqa,
        source: source.to_string(),
        instruction: question.to_string(),
        input: Some(IMAGE_PLACEHOLDER.to_string()),
        response: answer.to_string(),
        image: Some(codes),
        turns: Vec::new(),
    }
}
