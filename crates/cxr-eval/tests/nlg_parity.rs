//! BLEU, ROUGE-L, CIDEr-D and METEOR against the reference implementations' own numbers on the
//! same report pairs (pycocoevalcap 1.2 and NLTK 3.9.1; scripts/reference/nlg_metrics.py).

use cxr_eval::nlg::{self, Candidate};

fn fixture() -> (Vec<Candidate>, serde_json::Value) {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/nlg_reference.json")).unwrap();
    let toks = |s: &serde_json::Value| nlg::tokenize(s.as_str().unwrap());
    let corpus = v["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Candidate {
            hypothesis: toks(&p["hypothesis"]),
            references: p["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(toks)
                .collect(),
        })
        .collect();
    (corpus, v)
}

fn close(a: f64, b: &serde_json::Value, what: &str) {
    let b = b.as_f64().unwrap();
    assert!(
        (a - b).abs() < 1e-9 * b.abs().max(1.0),
        "{what}: ours {a}, reference {b}"
    );
}

#[test]
fn bleu_matches_pycocoevalcap() {
    let (corpus, v) = fixture();
    let (total, each) = nlg::bleu(&corpus);
    for n in 0..4 {
        close(total[n], &v["bleu"][n], &format!("corpus BLEU-{}", n + 1));
        for (i, e) in each.iter().enumerate() {
            close(
                e[n],
                &v["bleu_per_pair"][i][n],
                &format!("pair {i} BLEU-{}", n + 1),
            );
        }
    }
}

#[test]
fn rouge_l_matches_pycocoevalcap() {
    let (corpus, v) = fixture();
    for (i, c) in corpus.iter().enumerate() {
        close(
            nlg::rouge_l(&c.hypothesis, &c.references),
            &v["rouge_l_per_pair"][i],
            &format!("pair {i}"),
        );
    }
    close(nlg::score(&corpus).rouge_l, &v["rouge_l"], "corpus ROUGE-L");
}

#[test]
fn cider_d_matches_pycocoevalcap() {
    let (corpus, v) = fixture();
    let (total, each) = nlg::cider_d(&corpus);
    for (i, e) in each.iter().enumerate() {
        close(*e, &v["cider_d_per_pair"][i], &format!("pair {i}"));
    }
    close(total, &v["cider_d"], "corpus CIDEr-D");
}

#[test]
fn meteor_matches_nltk_exact_and_stem() {
    let (corpus, v) = fixture();
    for (i, c) in corpus.iter().enumerate() {
        close(
            nlg::meteor(&c.hypothesis, &c.references),
            &v["meteor_exact_stem_per_pair"][i],
            &format!("pair {i}"),
        );
    }
    close(
        nlg::score(&corpus).meteor,
        &v["meteor_exact_stem"],
        "corpus METEOR",
    );
}
