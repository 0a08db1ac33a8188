#!/usr/bin/env python3
"""Reference NLG scores for crates/cxr-eval/tests/fixtures/nlg_reference.json.

BLEU-1..4, ROUGE-L and CIDEr-D from pycocoevalcap (the implementation R2Gen-style report
generation papers, LLM-CXR's peers among them, report), METEOR from NLTK with exact and Snowball-stem (as METEOR 1.5 stems)
matching only (a WordNet stub that knows no synonyms, because WordNet cannot be fetched here and
llm-cxr implements those two stages). Text is lower-cased and split on spaces on both sides.

    python3 -m venv venv && venv/bin/pip install pycocoevalcap==1.2 nltk==3.9.1
    venv/bin/python scripts/reference/nlg_metrics.py
"""
import json
import os

from nltk.stem.snowball import SnowballStemmer
from nltk.translate.meteor_score import meteor_score
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "cxr-eval", "tests", "fixtures",
                   "nlg_reference.json")

# (generated report, [reference reports]); tokens separated by spaces, punctuation split off.
PAIRS = [
    ("no acute cardiopulmonary process .", ["no acute cardiopulmonary process ."]),
    ("the lungs are clear . no pleural effusion or pneumothorax .",
     ["lungs are clear . there is no pleural effusion or pneumothorax . heart size is normal ."]),
    ("small left pleural effusion with adjacent atelectasis .",
     ["small left pleural effusion . left basilar atelectasis ."]),
    ("moderate cardiomegaly with mild pulmonary edema .",
     ["cardiomegaly with moderate pulmonary edema and small bilateral effusions ."]),
    ("right lower lobe pneumonia .", ["patchy opacity in the right lower lobe concerning for pneumonia ."]),
    ("large right pneumothorax .", ["no pneumothorax . the lungs are clear ."]),
    ("endotracheal tube terminates 4 cm above the carina . lungs are clear .",
     ["endotracheal tube tip is 4 cm above the carina . no focal consolidation ."]),
    ("heart size is normal . lungs are clear .",
     ["heart size is normal . the lungs are clear .", "normal heart size . clear lungs ."]),
    ("bibasilar atelectasis . no effusion .", ["mild bibasilar atelectasis . no pleural effusion ."]),
    ("stable mild cardiomegaly . hyperexpanded but clear lungs .",
     ["stable mild cardiomegaly . hyperexpanded but clear lungs ."]),
    ("a 12 mm nodule in the right upper lobe .",
     ["there is a 12 mm nodule projecting over the right upper lung . recommend chest ct ."]),
    ("pulmonary edema has improved .", ["interval improvement in pulmonary edema ."]),
]


class NoWordNet:
    """A WordNet that knows no synonyms: METEOR's exact and stem stages only."""

    def synsets(self, *args, **kwargs):
        return []


def main():
    gts = {i: refs for i, (_, refs) in enumerate(PAIRS)}
    res = {i: [hyp] for i, (hyp, _) in enumerate(PAIRS)}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    stem = SnowballStemmer("english")
    meteor_each = [
        meteor_score([r.split() for r in refs], hyp.split(), stemmer=stem, wordnet=NoWordNet())
        for hyp, refs in PAIRS
    ]
    out = {
        "pairs": [{"hypothesis": h, "references": r} for h, r in PAIRS],
        "bleu": bleu,
        "bleu_per_pair": [list(x) for x in zip(*bleu_each)],
        "rouge_l": rouge,
        "rouge_l_per_pair": list(map(float, rouge_each)),
        "cider_d": cider,
        "cider_d_per_pair": list(map(float, cider_each)),
        "meteor_exact_stem": sum(meteor_each) / len(meteor_each),
        "meteor_exact_stem_per_pair": meteor_each,
    }
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
