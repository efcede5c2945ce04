"""Transcription scorers: character and word error rate (edit distance over the reference
length), for page transcription (CER) and speech transcription (WER) eval tasks.

Both are lower-is-better; `LOWER_IS_BETTER` names them so a task's default KPI gates the
right way (forgeml.eval.tasks.kpis_of). Register under `cer`/`wer` in forgeml.eval.scoring.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Hashable, Sequence

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
    sequences, with the two-row dynamic programme (Wagner & Fischer 1974)."""
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
