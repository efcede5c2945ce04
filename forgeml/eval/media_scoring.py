"""Media task scorers: character and word error rate (edit distance over the reference
length) for page and speech transcription, and CIDEr-D, the corpus-level caption score.

CER/WER are lower-is-better; `LOWER_IS_BETTER` names them so a task's default KPI gates the
right way (forgeml.eval.tasks.kpis_of). forgeml.eval.scoring registers `cer`/`wer`;
`CORPUS_SCORERS` (cider) score all of a task's outputs at once (forgeml.eval.media_suite).
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

try:
    from rapidfuzz.distance import Levenshtein as _Levenshtein
except ImportError:  # the multimodal extra installs it; python_edit_distance stands in
    _Levenshtein = None

LOWER_IS_BETTER = frozenset({"cer", "wer", "cer_raw", "wer_raw"})

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_transcript(
    text: str, *, lowercase: bool = True, punctuation: bool = False, unicode: bool = True
) -> str:
    """NFKC (with `unicode`), lower case (with `lowercase`), punctuation dropped unless
    `punctuation`, runs of whitespace collapsed to one space, ends stripped."""
    if unicode:
        text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if not punctuation:
        text = text.translate(_PUNCT)
    return " ".join(text.split())


def edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance (unit-cost substitutions, insertions, deletions) between two
    strings or sequences of words: rapidfuzz's C++ implementation (what jiwer uses) when it is
    installed, else `python_edit_distance`, which gives the same numbers far slower."""
    if _Levenshtein is None:
        return python_edit_distance(a, b)
    return _Levenshtein.distance(a, b)


def python_edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance with the two-row dynamic programme (Wagner & Fischer 1974)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _error_rate(hypothesis: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    if not reference:
        return float(len(hypothesis) > 0)
    return edit_distance(hypothesis, reference) / len(reference)


def character_error_rate(prediction: str, reference: str, *, normalize: bool = True) -> float:
    """Edits to turn the prediction into the reference over the reference's characters
    (0 is perfect; above 1 when the prediction is much longer). With `normalize`, both are
    passed through `normalize_transcript` first; an empty reference scores 0 or 1."""
    if normalize:
        prediction, reference = normalize_transcript(prediction), normalize_transcript(reference)
    return _error_rate(prediction, reference)


def word_error_rate(prediction: str, reference: str, *, normalize: bool = True) -> float:
    """Word-level edits over the reference's word count (as `jiwer.wer` on whitespace words);
    `normalize` as for `character_error_rate`."""
    if normalize:
        prediction, reference = normalize_transcript(prediction), normalize_transcript(reference)
    return _error_rate(prediction.split(), reference.split())


def cer(prediction: str, reference: str) -> float:
    """Scorer `cer`: character error rate after normalisation (case, punctuation, spaces)."""
    return character_error_rate(prediction, reference)


def wer(prediction: str, reference: str) -> float:
    """Scorer `wer`: word error rate after normalisation (case, punctuation, spaces)."""
    return word_error_rate(prediction, reference)


def cer_raw(prediction: str, reference: str) -> float:
    """Scorer `cer_raw`: character error rate on the texts as given (stripped only)."""
    return character_error_rate(prediction.strip(), reference.strip(), normalize=False)


def wer_raw(prediction: str, reference: str) -> float:
    """Scorer `wer_raw`: word error rate on whitespace words as given."""
    return word_error_rate(prediction, reference, normalize=False)


MEDIA_SCORERS = {"cer": cer, "wer": wer, "cer_raw": cer_raw, "wer_raw": wer_raw}


def caption_ngrams(text: str, n: int = 4) -> Counter:
    """Counts of the 1..n-grams of a caption's words after `normalize_transcript` (lower
    case, no punctuation: what COCO's PTB tokenization leaves for plain text)."""
    words = normalize_transcript(text).split()
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


def cider_d(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> list[float]:
    """CIDEr-D of each prediction against its references ("CIDEr: Consensus-based Image
    Description Evaluation", Vedantam et al., arXiv:1411.5726), computed as pycocoevalcap's
    CiderScorer does: n-gram TF-IDF vectors with IDF log(N / df) over the N examples' reference
    sets, the candidate's counts clipped by each reference's, a Gaussian penalty on the length
    difference (the bigram counts, as pycocoevalcap has it; sigma 6), the cosine averaged over
    n = 1..4 and the references, times 10. The mean over examples is the corpus CIDEr-D; it
    needs two examples or more (with one, every IDF is 0)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    candidates = [caption_ngrams(p, n) for p in predictions]
    refs = [[caption_ngrams(r, n) for r in rs] for rs in references]
    doc_freq = Counter(g for rs in refs for g in set().union(*rs))
    log_n = math.log(max(len(predictions), 1))

    def vector(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_n - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(v * v for v in level.values())) for level in vec]
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, norms, bigrams

    scores = []
    for cand, rs in zip(candidates, refs, strict=True):
        vc, nc, lc = vector(cand)
        total = 0.0
        for ref in rs:
            vr, nr, lr = vector(ref)
            penalty = math.exp(-((lc - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                dot = sum(min(v, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, v in vc[k].items())
                total += penalty * (dot / (nc[k] * nr[k]) if nc[k] and nr[k] else dot)
        scores.append(10.0 * total / n / len(rs) if rs else 0.0)
    return scores


CorpusScorer = Callable[[Sequence[str], Sequence[Sequence[str]]], list[float]]
CORPUS_SCORERS: dict[str, CorpusScorer] = {"cider": cider_d}
