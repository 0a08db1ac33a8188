//! A CheXpert-style report labeler: the 14 CheXpert observations as 1 / 0 / -1 / blank.
//!
//! It follows the CheXpert labeler (Irvin et al., AAAI 2019; MIT) stage by stage:
//! 1. **Mention extraction** with the labeler's own phrase lists (`phrases/mention/*.txt`, read at
//!    run time from the user's copy), skipping matches that overlap an unmention phrase
//!    (`phrases/unmention/*.txt`). `_` in a phrase is a word boundary.
//! 2. **Classification** of each mention, in the labeler's order: pre-negation uncertainty
//!    ("cannot exclude X", "X is not excluded", "no new X", "cannot rule out X"), then negation
//!    ("no", "without", "free of", "negative for", "clear of", "resolved", "normal", ...), then
//!    post-negation uncertainty ("may", "possible", "probable", "suggest", "versus",
//!    "differential", "X or Y", "vascular congestion", a stable heart size, ...). NegBio expresses
//!    these as patterns over dependency parses; here each trigger has a direction and a scope that
//!    runs to the end of the clause: scopes close at "but", "however", "although", "except",
//!    "which", "with" and at `;` / `:`, and a trigger that follows its mention ("X is not seen")
//!    also stops at a comma.
//! 3. **Aggregation** per observation: any positive mention gives 1, else any uncertain gives -1,
//!    else a negative gives 0; a positive "chf" makes a blank Cardiomegaly uncertain; No Finding is
//!    1 iff no observation but Support Devices is positive or uncertain and no other abnormality
//!    from `no_finding.txt` is mentioned positively or uncertainly.
//!
//! Text is lower-cased, cut into sentences at `.`, `?`, `!` followed by a space (not inside
//! numbers such as 4.5), and tokenised into words and the punctuation that closes scopes.

use std::path::{Path, PathBuf};

use cxr_data::{ChexpertLabels, Label, Observation};

/// Why the phrase lists could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LabelerError {
    #[error("{path}: cannot read CheXpert phrase list: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: no mention phrases found (expected the CheXpert labeler's phrases/mention/*.txt)"
    )]
    Empty { path: PathBuf },
}

/// Where a trigger looks for its mention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The trigger comes before the mention ("no X").
    Forward,
    /// The trigger comes after the mention ("X is not seen").
    Backward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    PreNegationUncertainty,
    Negation,
    PostNegationUncertainty,
}

use Direction::{Backward, Forward};
use Stage::{Negation, PostNegationUncertainty, PreNegationUncertainty};

/// The trigger vocabulary, after the CheXpert labeler's NegBio patterns
/// (`patterns/{pre_negation_uncertainty,negation,post_negation_uncertainty}.txt`).
const TRIGGERS: &[(Stage, Direction, &str)] = &[
    // Pre-negation uncertainty: matched first, so "cannot exclude" is never read as "not".
    (PreNegationUncertainty, Forward, "cannot exclude"),
    (PreNegationUncertainty, Forward, "can not exclude"),
    (PreNegationUncertainty, Forward, "can't exclude"),
    (PreNegationUncertainty, Forward, "cannot rule out"),
    (PreNegationUncertainty, Forward, "can not rule out"),
    (PreNegationUncertainty, Forward, "not rule out"),
    (PreNegationUncertainty, Forward, "no new"),
    (PreNegationUncertainty, Forward, "rule out"),
    (PreNegationUncertainty, Forward, "to exclude"),
    (PreNegationUncertainty, Forward, "r/o"),
    (PreNegationUncertainty, Backward, "cannot be excluded"),
    (PreNegationUncertainty, Backward, "can not be excluded"),
    (PreNegationUncertainty, Backward, "could not be excluded"),
    (PreNegationUncertainty, Backward, "not be excluded"),
    (PreNegationUncertainty, Backward, "not excluded"),
    (PreNegationUncertainty, Backward, "cannot be ruled out"),
    (PreNegationUncertainty, Backward, "not ruled out"),
    // Negation.
    (Negation, Forward, "no"),
    (Negation, Forward, "not"),
    (Negation, Forward, "without"),
    (Negation, Forward, "free of"),
    (Negation, Forward, "negative for"),
    (Negation, Forward, "clear of"),
    (Negation, Forward, "absence of"),
    (Negation, Forward, "resolution of"),
    (Negation, Forward, "resolved"),
    (Negation, Forward, "removal of"),
    (Negation, Forward, "rather than"),
    (Negation, Forward, "nor"),
    (Negation, Forward, "normal"),
    (Negation, Forward, "unremarkable"),
    (Negation, Forward, "exclusion of"),
    (Negation, Backward, "normal"),
    (Negation, Backward, "unremarkable"),
    (Negation, Backward, "within normal limits"),
    (Negation, Backward, "not seen"),
    (Negation, Backward, "not identified"),
    (Negation, Backward, "not present"),
    (Negation, Backward, "not evident"),
    (Negation, Backward, "absent"),
    (Negation, Backward, "resolved"),
    (Negation, Backward, "have cleared"),
    (Negation, Backward, "has cleared"),
    (Negation, Backward, "removed"),
    (Negation, Backward, "no longer"),
    (Negation, Backward, "excluded"),
    (Negation, Backward, "ruled out"),
    // Post-negation uncertainty.
    (PostNegationUncertainty, Forward, "possible"),
    (PostNegationUncertainty, Forward, "possibly"),
    (PostNegationUncertainty, Forward, "probable"),
    (PostNegationUncertainty, Forward, "probably"),
    (PostNegationUncertainty, Forward, "likely"),
    (PostNegationUncertainty, Forward, "may"),
    (PostNegationUncertainty, Forward, "might"),
    (PostNegationUncertainty, Forward, "could"),
    (PostNegationUncertainty, Forward, "would"),
    (PostNegationUncertainty, Forward, "maybe"),
    (PostNegationUncertainty, Forward, "suggest"),
    (PostNegationUncertainty, Forward, "suggests"),
    (PostNegationUncertainty, Forward, "suggesting"),
    (PostNegationUncertainty, Forward, "suggestive of"),
    (PostNegationUncertainty, Forward, "suspicious for"),
    (PostNegationUncertainty, Forward, "suspicion"),
    (PostNegationUncertainty, Forward, "suspect"),
    (PostNegationUncertainty, Forward, "suspected"),
    (PostNegationUncertainty, Forward, "concern for"),
    (PostNegationUncertainty, Forward, "concerning for"),
    (PostNegationUncertainty, Forward, "worrisome for"),
    (PostNegationUncertainty, Forward, "questionable"),
    (PostNegationUncertainty, Forward, "question of"),
    (PostNegationUncertainty, Forward, "presumably"),
    (PostNegationUncertainty, Forward, "presumed"),
    (PostNegationUncertainty, Forward, "versus"),
    (PostNegationUncertainty, Forward, "vs"),
    (PostNegationUncertainty, Forward, "differential"),
    (PostNegationUncertainty, Forward, "consider"),
    (PostNegationUncertainty, Forward, "correlate"),
    (PostNegationUncertainty, Forward, "correlation"),
    (PostNegationUncertainty, Forward, "evaluate for"),
    (PostNegationUncertainty, Forward, "evaluation for"),
    (PostNegationUncertainty, Forward, "borderline"),
    (PostNegationUncertainty, Forward, "equivocal"),
    (PostNegationUncertainty, Forward, "indeterminate"),
    (PostNegationUncertainty, Forward, "obscuring"),
    (PostNegationUncertainty, Backward, "is possible"),
    (PostNegationUncertainty, Backward, "are possible"),
    (PostNegationUncertainty, Backward, "suspected"),
    (PostNegationUncertainty, Backward, "is likely"),
    (PostNegationUncertainty, Backward, "is questionable"),
    (PostNegationUncertainty, Backward, "versus"),
    (PostNegationUncertainty, Backward, "vs"),
    // "X may be present", "X could be a nipple shadow"; but not "X could represent Y".
    (PostNegationUncertainty, Backward, "may be"),
    (PostNegationUncertainty, Backward, "might be"),
    (PostNegationUncertainty, Backward, "could be"),
    (PostNegationUncertainty, Backward, "are likely"),
    (PostNegationUncertainty, Backward, "less likely"),
    (PostNegationUncertainty, Backward, "unlikely"),
    (PostNegationUncertainty, Backward, "borderline"),
    (PostNegationUncertainty, Backward, "not well seen"),
    (PostNegationUncertainty, Backward, "not well visualized"),
    (PostNegationUncertainty, Backward, "not well evaluated"),
    (PostNegationUncertainty, Backward, "poorly evaluated"),
    (PostNegationUncertainty, Backward, "incompletely evaluated"),
    (PostNegationUncertainty, Backward, "not appreciated"),
    (PostNegationUncertainty, Backward, "not clearly seen"),
    (PostNegationUncertainty, Backward, "obscured"),
];

/// Words that close a trigger's scope in both directions.
const CLAUSE_BREAKS: &[&str] = &[
    "but",
    "however",
    "although",
    "though",
    "except",
    "which",
    "whereas",
    "with",
    "aside",
    "apart",
    "otherwise",
    "there",
    ";",
    ":",
];

/// Edema mentions that the labeler reads as uncertain wherever they stand.
const UNCERTAIN_MENTIONS: &[&str] = &[
    "vascular congestion",
    "pulmonary congestion",
    "indistinctness",
    "vascular prominence",
];

/// Generic cardiac / mediastinal words: they only become positive with a word of abnormality,
/// and are uncertain when only called stable or unchanged.
const GENERIC_CARDIAC: &[&str] = &[
    "the heart",
    "heart size",
    "cardiac size",
    "cardiac shadow",
    "cardiac contour",
    "cardiac silhouette",
    "contour",
    "mediastinum",
    "mediastinal silhouette",
    "mediastinal configuration",
    "pericardial silhouette",
    "cardiomediastinum",
    "cardiomediastinal",
];
const ABNORMAL_WORDS: &[&str] = &[
    "enlarg",
    "widen",
    "increas",
    "prominen",
    "large",
    "cardiomegaly",
    "dilat",
    "globular",
    "mildly",
    "moderately",
    "markedly",
    "severely",
];
const STABLE_WORDS: &[&str] = &[
    "stable",
    "unchanged",
    "similar",
    "changed",
    "prior",
    "borderline",
];

struct PhraseSet {
    observation: Observation,
    mentions: Vec<String>,
    unmentions: Vec<String>,
}

/// A half-open range of token indices.
type Span = (usize, usize);

/// What a phrase of the automaton stands for.
#[derive(Clone, Copy)]
enum PhraseRole {
    /// A mention of `sets[i]`.
    Mention(usize),
    /// An unmention of `sets[i]`.
    Unmention(usize),
    /// An abnormality from `no_finding.txt`.
    OtherAbnormality,
}

/// The labeler. Build it once from the CheXpert phrase lists; `label` is cheap: every phrase of
/// every list is found in one Aho-Corasick pass per sentence.
pub struct ReportLabeler {
    sets: Vec<PhraseSet>,
    automaton: aho_corasick::AhoCorasick,
    roles: Vec<PhraseRole>,
    triggers: Vec<(Stage, Direction, Vec<String>)>,
    /// Trigger indices by their first word.
    triggers_by_first_word: std::collections::HashMap<String, Vec<usize>>,
}

/// A phrase as matched: lower case, `_` standing for the word boundary.
fn normalise_phrase(p: &str) -> String {
    p.trim().to_lowercase().replace('_', " ")
}

fn read_list(path: &Path) -> Result<Vec<String>, LabelerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(normalise_phrase)
            .filter(|l| !l.trim().is_empty())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(source) => Err(LabelerError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl ReportLabeler {
    /// Reads the CheXpert labeler's phrase lists from `dir` (the folder holding `phrases/`, or
    /// `phrases/` itself).
    pub fn from_dir(dir: &Path) -> Result<Self, LabelerError> {
        let phrases = if dir.join("phrases").is_dir() {
            dir.join("phrases")
        } else {
            dir.to_path_buf()
        };
        let file = |kind: &str, o: Observation| {
            phrases
                .join(kind)
                .join(format!("{}.txt", o.name().to_lowercase().replace(' ', "_")))
        };
        let mut sets = Vec::new();
        let mut other_abnormalities = Vec::new();
        for o in Observation::ALL {
            let mentions = read_list(&file("mention", o))?;
            if o == Observation::NoFinding {
                other_abnormalities = mentions;
                continue;
            }
            let mut unmentions = read_list(&file("unmention", o))?;
            if matches!(
                o,
                Observation::Cardiomegaly | Observation::EnlargedCardiomediastinum
            ) {
                // The labeler's generated cardiac unmentions: "over the heart" is a location.
                unmentions.extend(mentions.iter().map(|m| format!("over {}", m.trim())));
            }
            sets.push(PhraseSet {
                observation: o,
                mentions,
                unmentions,
            });
        }
        if sets.iter().all(|s| s.mentions.is_empty()) {
            return Err(LabelerError::Empty { path: phrases });
        }
        let triggers: Vec<(Stage, Direction, Vec<String>)> = TRIGGERS
            .iter()
            .map(|&(stage, dir, t)| (stage, dir, t.split(' ').map(str::to_string).collect()))
            .collect();
        let mut triggers_by_first_word: std::collections::HashMap<String, Vec<usize>> =
            std::collections::HashMap::new();
        for (i, (_, _, words)) in triggers.iter().enumerate() {
            triggers_by_first_word
                .entry(words[0].clone())
                .or_default()
                .push(i);
        }
        let mut patterns: Vec<&str> = Vec::new();
        let mut roles = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            for m in &set.mentions {
                patterns.push(m);
                roles.push(PhraseRole::Mention(i));
            }
            for u in &set.unmentions {
                patterns.push(u);
                roles.push(PhraseRole::Unmention(i));
            }
        }
        for o in &other_abnormalities {
            patterns.push(o);
            roles.push(PhraseRole::OtherAbnormality);
        }
        let automaton =
            aho_corasick::AhoCorasick::new(&patterns).expect("phrase lists build an automaton");
        Ok(Self {
            sets,
            automaton,
            roles,
            triggers,
            triggers_by_first_word,
        })
    }

    /// Mentions per phrase set (token spans) and other-abnormality spans of one sentence.
    fn find_mentions(&self, s: &Sentence) -> (Vec<Vec<Span>>, Vec<Span>) {
        let mut mentions: Vec<Vec<(usize, usize, usize, usize)>> =
            vec![Vec::new(); self.sets.len()];
        let mut blocked: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.sets.len()];
        let mut others = Vec::new();
        for m in self.automaton.find_overlapping_iter(s.joined.as_str()) {
            let (at, end) = (m.start(), m.end());
            match self.roles[m.pattern().as_usize()] {
                PhraseRole::Mention(i) => {
                    let (first, last) = s.token_span(at, end);
                    mentions[i].push((at, end, first, last));
                }
                PhraseRole::Unmention(i) => blocked[i].push((at, end)),
                PhraseRole::OtherAbnormality => {
                    let span = s.token_span(at, end);
                    if !others.contains(&span) {
                        others.push(span);
                    }
                }
            }
        }
        let spans = mentions
            .into_iter()
            .zip(&blocked)
            .map(|(found, blocked)| {
                let mut out: Vec<(usize, usize)> = Vec::new();
                for (at, end, first, last) in found {
                    if blocked.iter().any(|&(a, b)| at < b && a < end) {
                        continue;
                    }
                    if !out.iter().any(|&(s, e)| s < last && first < e) {
                        out.push((first, last));
                    }
                }
                out
            })
            .collect();
        (spans, others)
    }

    /// Labels one report.
    pub fn label(&self, report: &str) -> ChexpertLabels {
        let mut found: [Option<Label>; 14] = [None; 14];
        let mut blocks_no_finding = false;
        let mut chf = false;
        let lower = report.to_lowercase();
        for sentence in split_sentences(&lower) {
            let s = Sentence::new(sentence);
            if s.tokens.is_empty() {
                continue;
            }
            let triggers = self.find_triggers(&s);
            let (mentions, others) = self.find_mentions(&s);
            for (set, spans) in self.sets.iter().zip(mentions) {
                for m in spans {
                    let label = self.classify(&s, &triggers, m, set.observation);
                    let slot = &mut found[set.observation.index()];
                    *slot = Some(merge(*slot, label));
                    if set.observation == Observation::Edema
                        && label == Label::Positive
                        && s.phrase_at(m) == "chf"
                    {
                        chf = true;
                    }
                }
            }
            for m in others {
                if self.classify(&s, &triggers, m, Observation::NoFinding) != Label::Negative {
                    blocks_no_finding = true;
                }
            }
        }
        if chf && found[Observation::Cardiomegaly.index()].is_none() {
            found[Observation::Cardiomegaly.index()] = Some(Label::Uncertain);
        }
        let labels = ChexpertLabels(found).with_no_finding_rule();
        if blocks_no_finding {
            let mut l = labels;
            l.set(Observation::NoFinding, None);
            return l;
        }
        labels
    }

    fn find_triggers(&self, s: &Sentence) -> Vec<(Stage, Direction, usize, usize)> {
        let mut out = Vec::new();
        for (start, token) in s.tokens.iter().enumerate() {
            let Some(candidates) = self.triggers_by_first_word.get(token) else {
                continue;
            };
            for &i in candidates {
                let (stage, dir, words) = &self.triggers[i];
                let end = start + words.len();
                if end <= s.tokens.len()
                    && s.tokens[start..end].iter().zip(words).all(|(t, w)| t == w)
                {
                    out.push((*stage, *dir, start, end));
                }
            }
        }
        out
    }

    /// The status of one mention (token span) in its sentence.
    fn classify(
        &self,
        s: &Sentence,
        triggers: &[(Stage, Direction, usize, usize)],
        (ms, me): (usize, usize),
        observation: Observation,
    ) -> Label {
        let in_scope = |stage: Stage| {
            triggers.iter().any(|&(st, dir, ts, te)| {
                st == stage
                    && match dir {
                        Forward => te <= ms && !s.breaks_between(te, ms, false),
                        Backward => {
                            ts >= me
                                && !s.breaks_between(me, ts, true)
                                && !(s.tokens[te - 1] == "be" && s.explains_cause(te))
                        }
                    }
            })
        };
        if in_scope(PreNegationUncertainty) {
            return Label::Uncertain;
        }
        if in_scope(Negation) {
            return Label::Negative;
        }
        if in_scope(PostNegationUncertainty) {
            return Label::Uncertain;
        }
        // "X or Y": either is uncertain.
        let or_before = ms > 0 && s.tokens[ms - 1] == "or";
        let or_after = me < s.tokens.len() && s.tokens[me] == "or";
        if or_before || or_after {
            return Label::Uncertain;
        }
        let phrase = s.phrase_at((ms, me));
        if observation == Observation::Edema
            && UNCERTAIN_MENTIONS.iter().any(|u| phrase.contains(u))
        {
            return Label::Uncertain;
        }
        if matches!(
            observation,
            Observation::Cardiomegaly | Observation::EnlargedCardiomediastinum
        ) && GENERIC_CARDIAC
            .iter()
            .any(|g| phrase.trim() == *g || phrase.trim().starts_with(g))
        {
            let abnormal = ABNORMAL_WORDS.iter().any(|w| s.joined.contains(w));
            let stable = s.tokens.iter().any(|t| STABLE_WORDS.contains(&t.as_str()));
            if !abnormal && stable {
                return Label::Uncertain;
            }
        }
        Label::Positive
    }
}

/// Positive beats uncertain beats negative (the labeler's aggregation).
fn merge(old: Option<Label>, new: Label) -> Label {
    match (old, new) {
        (Some(Label::Positive), _) | (_, Label::Positive) => Label::Positive,
        (Some(Label::Uncertain), _) | (_, Label::Uncertain) => Label::Uncertain,
        _ => Label::Negative,
    }
}

/// Sentences: cut after `.`, `?`, `!` when followed by whitespace or the end, and at newlines
/// that end a numbered item or a blank line.
fn split_sentences(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..bytes.len() {
        let end_mark = matches!(bytes[i], b'.' | b'?' | b'!')
            && (i + 1 == bytes.len() || bytes[i + 1].is_ascii_whitespace());
        let blank_line = bytes[i] == b'\n'
            && text[i + 1..]
                .trim_start_matches([' ', '\t', '\r'])
                .starts_with('\n');
        if end_mark || blank_line {
            out.push(&text[start..=i]);
            start = i + 1;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    // Drop blank pieces and bare list numbers ("2.").
    out.retain(|s| s.chars().any(char::is_alphabetic));
    out
}

/// A tokenised sentence: words (letters, digits, `-`, `/`, `'`) and the punctuation that
/// matters for scopes (`,` `;` `:`), with the text they are joined into for phrase search.
struct Sentence {
    tokens: Vec<String>,
    /// " tok0 tok1 ... " and the byte offset of each token in it.
    joined: String,
    starts: Vec<usize>,
}

impl Sentence {
    fn new(text: &str) -> Self {
        let mut tokens = Vec::new();
        let mut word = String::new();
        for c in text.chars() {
            if c.is_alphanumeric() || matches!(c, '-' | '/' | '\'') {
                word.push(c);
                continue;
            }
            if !word.is_empty() {
                tokens.push(std::mem::take(&mut word));
            }
            if matches!(c, ',' | ';' | ':') {
                tokens.push(c.to_string());
            }
        }
        if !word.is_empty() {
            tokens.push(word);
        }
        let mut joined = String::from(" ");
        let mut starts = Vec::with_capacity(tokens.len());
        for t in &tokens {
            starts.push(joined.len());
            joined.push_str(t);
            joined.push(' ');
        }
        Self {
            tokens,
            joined,
            starts,
        }
    }

    /// Token index containing byte `offset` of `joined`.
    fn token_at(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        }
    }

    /// Tokens touched by the bytes `[at, end)` of `joined`, ignoring a phrase's boundary spaces.
    fn token_span(&self, at: usize, end: usize) -> (usize, usize) {
        let text = &self.joined[at..end];
        let lead = text.len() - text.trim_start().len();
        let trail = text.len() - text.trim_end().len();
        (self.token_at(at + lead), self.token_at(end - 1 - trail) + 1)
    }

    fn phrase_at(&self, (s, e): (usize, usize)) -> String {
        self.tokens[s..e].join(" ")
    }

    /// Whether the words at `at` give a cause or an interpretation ("may be due to Y", "could be
    /// related to Y"): the hedge then bears on Y, not on the subject before it.
    fn explains_cause(&self, at: usize) -> bool {
        self.tokens.get(at).is_some_and(|t| {
            matches!(
                t.as_str(),
                "due"
                    | "related"
                    | "secondary"
                    | "caused"
                    | "from"
                    | "consistent"
                    | "compatible"
                    | "reflecting"
                    | "representing"
            )
        })
    }

    /// Whether a scope break lies in tokens `[from, to)`; commas break backward scopes only.
    fn breaks_between(&self, from: usize, to: usize, comma_breaks: bool) -> bool {
        self.tokens[from..to]
            .iter()
            .any(|t| CLAUSE_BREAKS.contains(&t.as_str()) || (comma_breaks && t == ","))
    }
}

/// Labels a CheXpert-labeler input file (one report per row, no header) and writes its output
/// layout (`Reports` and the 14 observation columns), calling `tick` after each report.
pub fn label_csv(
    labeler: &ReportLabeler,
    input: &Path,
    output: &Path,
    tick: &dyn Fn(),
) -> Result<usize, LabelCsvError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: csv::Error| LabelCsvError::Csv {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(input)
        .map_err(io(input))?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(io(input))?;
        rows.push(record.get(0).unwrap_or("").to_string());
    }
    let mut out = Vec::new();
    {
        let mut writer = csv::Writer::from_writer(&mut out);
        let mut header = vec!["Reports"];
        header.extend(Observation::ALL.iter().map(|o| o.name()));
        writer.write_record(&header).map_err(io(output))?;
        for report in &rows {
            let labels = labeler.label(report);
            let mut record = vec![report.as_str()];
            record.extend(labels.to_csv_cells());
            writer.write_record(&record).map_err(io(output))?;
            tick();
        }
        writer.flush().map_err(|e| LabelCsvError::Write {
            path: output.to_path_buf(),
            source: e,
        })?;
    }
    cxr_data::write_atomic(output, &out).map_err(|e| LabelCsvError::Write {
        path: output.to_path_buf(),
        source: e,
    })?;
    Ok(rows.len())
}

#[derive(Debug, thiserror::Error)]
pub enum LabelCsvError {
    #[error("{path}: {message}")]
    Csv { path: PathBuf, message: String },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_periods_but_not_decimals() {
        let s = split_sentences("a 4.5 cm nodule. no effusion.\n\n2. cardiomegaly");
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[0].contains("4.5 cm"));
    }

    #[test]
    fn tokens_keep_scope_punctuation() {
        let s = Sentence::new("no effusion, pneumothorax; or edema");
        assert_eq!(
            s.tokens,
            vec!["no", "effusion", ",", "pneumothorax", ";", "or", "edema"]
        );
        let at = s.joined.find(" pneumothorax").unwrap();
        assert_eq!(s.token_span(at, at + " pneumothorax".len()), (3, 4));
    }
}
