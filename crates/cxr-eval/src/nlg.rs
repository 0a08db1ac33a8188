//! Natural-language generation metrics for reports, computed the way report-generation papers
//! (R2Gen and its successors, LLM-CXR's comparisons) compute them:
//! - **BLEU-1..4** as pycocoevalcap's `BleuScorer` (corpus-level, brevity penalty against the
//!   closest reference length, its tiny smoothing constants);
//! - **ROUGE-L** as pycocoevalcap's `Rouge` (LCS precision and recall maximised over references,
//!   F with beta 1.2, averaged over reports);
//! - **CIDEr-D** as pycocoevalcap's `Cider` (TF-IDF n-grams 1..4 with document frequencies from the
//!   references, clipping, Gaussian length penalty sigma 6, x10);
//! - **METEOR** after Banerjee and Lavie (2005) as NLTK computes it (alpha 0.9, beta 3, gamma 0.5),
//!   with the **exact** and **stem** matching stages (Snowball English stems, METEOR 1.5's
//!   stemmer); the WordNet-synonym and paraphrase stages are left out, since neither resource
//!   can be shipped here. Scores are therefore at most METEOR-with-synonyms.
//!
//! All take tokens from [`tokenize`]: lower case, punctuation split off, whitespace separated.
//! Parity with the reference implementations is tested on fixtures written by
//! `scripts/reference/nlg_metrics.py`.

use std::collections::{BTreeMap, HashMap};

/// One generated report and its reference reports.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub hypothesis: Vec<String>,
    pub references: Vec<Vec<String>>,
}

/// Corpus-level scores (and per-report ones where the metric defines them).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NlgScores {
    pub bleu: [f64; 4],
    pub meteor: f64,
    pub rouge_l: f64,
    pub cider_d: f64,
}

/// Lower-cases and splits punctuation from words.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_alphanumeric()
            || matches!(c, '-' | '\'' | '/')
            || (c == '.' && !word.is_empty() && word.chars().all(|w| w.is_ascii_digit()))
        {
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    // A number that ended a sentence keeps its period: split it back off ("4." -> "4", ".").
    out.into_iter()
        .flat_map(|t| {
            if t.len() > 1 && t.ends_with('.') {
                vec![t[..t.len() - 1].to_string(), ".".to_string()]
            } else {
                vec![t]
            }
        })
        .collect()
}

/// All four metrics over a corpus.
pub fn score(corpus: &[Candidate]) -> NlgScores {
    NlgScores {
        bleu: bleu(corpus).0,
        meteor: corpus
            .iter()
            .map(|c| meteor(&c.hypothesis, &c.references))
            .sum::<f64>()
            / corpus.len().max(1) as f64,
        rouge_l: corpus
            .iter()
            .map(|c| rouge_l(&c.hypothesis, &c.references))
            .sum::<f64>()
            / corpus.len().max(1) as f64,
        cider_d: cider_d(corpus).0,
    }
}

type NgramCounts<'a> = HashMap<&'a [String], usize>;

fn ngrams(tokens: &[String], n: usize) -> NgramCounts<'_> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// BLEU-1..4: the corpus scores and each report's own.
pub fn bleu(corpus: &[Candidate]) -> ([f64; 4], Vec<[f64; 4]>) {
    const TINY: f64 = 1e-15;
    const SMALL: f64 = 1e-9;
    let (mut test_len, mut ref_len) = (0.0, 0.0);
    let mut guess = [0.0f64; 4];
    let mut correct = [0.0f64; 4];
    let mut each = Vec::with_capacity(corpus.len());
    for c in corpus {
        let hyp_len = c.hypothesis.len();
        // pycocoevalcap "closest": the reference length nearest the hypothesis, shorter on ties.
        let r_len = c
            .references
            .iter()
            .map(|r| r.len())
            .min_by_key(|&l| ((l as i64 - hyp_len as i64).abs(), l))
            .unwrap_or(0);
        let mut g = [0.0f64; 4];
        let mut k = [0.0f64; 4];
        for n in 1..=4 {
            let hyp = ngrams(&c.hypothesis, n);
            let mut max_ref: NgramCounts = HashMap::new();
            for r in &c.references {
                for (gram, count) in ngrams(r, n) {
                    let e = max_ref.entry(gram).or_insert(0);
                    *e = (*e).max(count);
                }
            }
            g[n - 1] = hyp_len.saturating_sub(n - 1) as f64;
            k[n - 1] = hyp
                .iter()
                .map(|(gram, &count)| count.min(*max_ref.get(gram).unwrap_or(&0)) as f64)
                .sum();
        }
        each.push(bleu_from_counts(
            &k,
            &g,
            hyp_len as f64,
            r_len as f64,
            TINY,
            SMALL,
        ));
        test_len += hyp_len as f64;
        ref_len += r_len as f64;
        for n in 0..4 {
            guess[n] += g[n];
            correct[n] += k[n];
        }
    }
    (
        bleu_from_counts(&correct, &guess, test_len, ref_len, TINY, SMALL),
        each,
    )
}

fn bleu_from_counts(
    correct: &[f64; 4],
    guess: &[f64; 4],
    test_len: f64,
    ref_len: f64,
    tiny: f64,
    small: f64,
) -> [f64; 4] {
    let mut out = [0.0; 4];
    let mut product = 1.0;
    for k in 0..4 {
        product *= (correct[k] + tiny) / (guess[k] + small);
        out[k] = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (test_len + tiny) / (ref_len + small);
    if ratio < 1.0 {
        for b in &mut out {
            *b *= (1.0 - 1.0 / ratio).exp();
        }
    }
    out
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of one report (pycocoevalcap: beta 1.2, precision and recall maximised separately).
pub fn rouge_l(hypothesis: &[String], references: &[Vec<String>]) -> f64 {
    const BETA: f64 = 1.2;
    if hypothesis.is_empty() {
        return 0.0;
    }
    let (mut p, mut r) = (0.0f64, 0.0f64);
    for reference in references.iter().filter(|x| !x.is_empty()) {
        let l = lcs(reference, hypothesis) as f64;
        p = p.max(l / hypothesis.len() as f64);
        r = r.max(l / reference.len() as f64);
    }
    if p == 0.0 || r == 0.0 {
        return 0.0;
    }
    ((1.0 + BETA * BETA) * p * r) / (r + BETA * BETA * p)
}

/// METEOR of one report against its best reference (exact and stem stages; see the module note).
pub fn meteor(hypothesis: &[String], references: &[Vec<String>]) -> f64 {
    let stemmer = rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English);
    references
        .iter()
        .map(|r| meteor_single(hypothesis, r, &stemmer))
        .fold(0.0, f64::max)
}

/// NLTK's greedy alignment: hypothesis words from the last, each to the last equal reference word.
fn align(
    hyp: &mut Vec<(usize, String)>,
    reference: &mut Vec<(usize, String)>,
) -> Vec<(usize, usize)> {
    let mut matches = Vec::new();
    let mut i = hyp.len();
    while i > 0 {
        i -= 1;
        if let Some(j) = (0..reference.len())
            .rev()
            .find(|&j| reference[j].1 == hyp[i].1)
        {
            matches.push((hyp[i].0, reference[j].0));
            hyp.remove(i);
            reference.remove(j);
        }
    }
    matches
}

fn meteor_single(
    hypothesis: &[String],
    reference: &[String],
    stemmer: &rust_stemmers::Stemmer,
) -> f64 {
    const ALPHA: f64 = 0.9;
    const BETA: f64 = 3.0;
    const GAMMA: f64 = 0.5;
    let mut hyp: Vec<(usize, String)> = hypothesis
        .iter()
        .map(|w| w.to_lowercase())
        .enumerate()
        .collect();
    let mut refs: Vec<(usize, String)> = reference
        .iter()
        .map(|w| w.to_lowercase())
        .enumerate()
        .collect();
    let (hyp_len, ref_len) = (hyp.len() as f64, refs.len() as f64);
    let mut matches = align(&mut hyp, &mut refs);
    let stem = |v: &mut Vec<(usize, String)>| {
        for (_, w) in v.iter_mut() {
            *w = stemmer.stem(w).into_owned();
        }
    };
    stem(&mut hyp);
    stem(&mut refs);
    matches.extend(align(&mut hyp, &mut refs));
    matches.sort();
    let m = matches.len() as f64;
    if m == 0.0 || hyp_len == 0.0 || ref_len == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (m / hyp_len, m / ref_len);
    let fmean = precision * recall / (ALPHA * precision + (1.0 - ALPHA) * recall);
    let mut chunks = 1.0;
    for w in matches.windows(2) {
        if !(w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1 + 1) {
            chunks += 1.0;
        }
    }
    let penalty = GAMMA * (chunks / m).powf(BETA);
    (1.0 - penalty) * fmean
}

/// CIDEr-D: the corpus score and each report's own. N-grams are kept in ordered maps, so the
/// sums run in one order and the score is the same on every run (hash order made the last
/// digits vary).
pub fn cider_d(corpus: &[Candidate]) -> (f64, Vec<f64>) {
    const SIGMA: f64 = 6.0;
    let all_ngrams = |tokens: &[String]| -> BTreeMap<Vec<String>, f64> {
        let mut m = BTreeMap::new();
        for n in 1..=4 {
            for (gram, count) in ngrams(tokens, n) {
                *m.entry(gram.to_vec()).or_insert(0.0) += count as f64;
            }
        }
        m
    };
    let hyps: Vec<_> = corpus.iter().map(|c| all_ngrams(&c.hypothesis)).collect();
    let refs: Vec<Vec<_>> = corpus
        .iter()
        .map(|c| c.references.iter().map(|r| all_ngrams(r)).collect())
        .collect();
    let mut df: BTreeMap<&Vec<String>, f64> = BTreeMap::new();
    for image_refs in &refs {
        let mut seen = std::collections::HashSet::new();
        for r in image_refs {
            for gram in r.keys() {
                seen.insert(gram);
            }
        }
        for gram in seen {
            *df.entry(gram).or_insert(0.0) += 1.0;
        }
    }
    let log_n = (corpus.len() as f64).ln();
    let mut each = Vec::with_capacity(corpus.len());
    for (h, rs) in hyps.iter().zip(&refs) {
        let (vh, nh, lh) = tfidf(h, &df, log_n);
        let mut total = [0.0f64; 4];
        for r in rs {
            let (vr, nr, lr) = tfidf(r, &df, log_n);
            let delta = lh - lr;
            for n in 0..4 {
                let mut val: f64 = vh[n]
                    .iter()
                    .map(|(gram, &x)| {
                        let y = vr[n].get(gram).copied().unwrap_or(0.0);
                        x.min(y) * y
                    })
                    .sum();
                if nh[n] != 0.0 && nr[n] != 0.0 {
                    val /= nh[n] * nr[n];
                }
                total[n] += val * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
            }
        }
        let mean = total.iter().sum::<f64>() / 4.0;
        each.push(mean / rs.len().max(1) as f64 * 10.0);
    }
    let corpus_score = each.iter().sum::<f64>() / each.len().max(1) as f64;
    (corpus_score, each)
}

type TfIdf<'a> = ([BTreeMap<&'a [String], f64>; 4], [f64; 4], f64);

/// TF-IDF vectors per n-gram order, their norms, and the "length" pycocoevalcap uses (which, by a
/// quirk of its indexing, counts bigrams).
fn tfidf<'a>(
    counts: &'a BTreeMap<Vec<String>, f64>,
    df: &BTreeMap<&Vec<String>, f64>,
    log_n: f64,
) -> TfIdf<'a> {
    let mut vec: [BTreeMap<&[String], f64>; 4] = Default::default();
    let mut norm = [0.0f64; 4];
    let mut length = 0.0;
    for (gram, &tf) in counts {
        let n = gram.len() - 1;
        let d = df.get(gram).copied().unwrap_or(0.0).max(1.0).ln();
        let v = tf * (log_n - d);
        vec[n].insert(gram.as_slice(), v);
        norm[n] += v * v;
        if n == 1 {
            length += tf;
        }
    }
    (vec, norm.map(f64::sqrt), length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    /// The same corpus scores the same, to the last bit, however often it is scored (with hash
    /// maps the sums ran in a different order each time).
    #[test]
    fn cider_d_is_the_same_on_every_run() {
        let words = [
            "the",
            "heart",
            "size",
            "is",
            "normal",
            "small",
            "left",
            "right",
            "pleural",
            "effusion",
            "no",
            "pneumothorax",
            "mild",
            "edema",
            "lungs",
            "are",
            "clear",
        ];
        let text = |seed: usize, len: usize| -> Vec<String> {
            (0..len)
                .map(|k| words[(seed * 7 + k * k * 3 + k) % words.len()].to_string())
                .collect()
        };
        let corpus: Vec<Candidate> = (0..40)
            .map(|i| Candidate {
                hypothesis: text(i, 12 + i % 5),
                references: vec![text(i + 1, 14), text(i + 3, 10)],
            })
            .collect();
        let first = cider_d(&corpus).0;
        for _ in 0..20 {
            assert_eq!(cider_d(&corpus).0.to_bits(), first.to_bits());
        }
    }

    #[test]
    fn tokenizer_splits_punctuation_keeps_decimals() {
        assert_eq!(
            tokenize("Small 4.5 cm nodule, R/O mass."),
            vec!["small", "4.5", "cm", "nodule", ",", "r/o", "mass", "."]
        );
        assert_eq!(tokenize("Grade 2."), vec!["grade", "2", "."]);
    }

    #[test]
    fn nltk_documentation_bleu_example() {
        // nltk.translate.bleu_score.sentence_bleu docstring: 0.5045666840058485.
        let c = Candidate {
            hypothesis: toks("It is a guide to action which ensures that the military always obeys the commands of the party"),
            references: vec![
                toks("It is a guide to action that ensures that the military will forever heed Party commands"),
                toks("It is the guiding principle which guarantees the military forces always being under the command of the Party"),
                toks("It is the practical guide for the army always to heed the directions of the party"),
            ],
        };
        let (corpus, each) = bleu(&[c]);
        assert!(
            (corpus[3] - 0.5045666840058485).abs() < 1e-6,
            "{}",
            corpus[3]
        );
        assert!((each[0][3] - corpus[3]).abs() < 1e-12);
    }

    #[test]
    fn lcs_and_identity() {
        assert_eq!(lcs(&toks("a b c d"), &toks("a c d b")), 3);
        let t = toks("no acute process .");
        assert!((rouge_l(&t, std::slice::from_ref(&t)) - 1.0).abs() < 1e-12);
        assert!(meteor(&t, std::slice::from_ref(&t)) > 0.99);
    }
}
