"""Word error rate as the field reports it: Whisper's English normaliser on both sides, then corpus WER
(and character error rate, CER, the same way over characters).

Published English WERs (Whisper's paper, the Open ASR Leaderboard) normalise reference and hypothesis
with Whisper's ``EnglishTextNormalizer`` (case, punctuation, British→American spelling, "mr" →
"mister", spelled-out numbers → digits, ...) before aligning words, so "Mr. Smith's colour" and
"mister smith's color" are the same transcript. Corpus WER is the total of substitutions, deletions
and insertions over the total reference words — not a mean of per-utterance WERs, which would let a
two-word utterance weigh as much as a fifty-word one.

An utterance whose normalised reference is empty (e.g. "[noise]" or "uh") has no words to get wrong:
it is left out of the WER and counted in ``Score.empty_references``, never dropped silently.

CER aligns the normalised texts character by character (spaces included, as jiwer counts them): total
character edits over total reference characters, on the same utterances as the WER.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Whisper's English normalisation of one transcript (lower case, words separated by single spaces)."""
    return " ".join(_normalizer()(text).split())


@dataclass
class UtteranceErrors:
    """Word-level alignment counts of one utterance (after normalisation)."""

    ref_words: int
    sub: int
    dels: int
    ins: int
    char_errors: int = 0  # character substitutions + deletions + insertions
    ref_chars: int = 0  # characters of the normalised reference, spaces included

    @property
    def errors(self) -> int:
        return self.sub + self.dels + self.ins


@dataclass
class Score:
    """Corpus WER of a list of (reference, hypothesis) pairs.

    ``utterances[i]`` belongs to pair i and is None for a pair skipped for an empty normalised reference.
    """

    wer: float  # (sub + dels + ins) / ref_words; nan when no pair has reference words
    sub: int
    dels: int
    ins: int
    ref_words: int
    n: int  # pairs scored
    empty_references: int  # pairs skipped: their normalised reference has no words
    norm_references: list[str]
    norm_hypotheses: list[str]
    utterances: list[UtteranceErrors | None]
    cer: float = float("nan")  # character edits / ref_chars over the same utterances
    char_errors: int = 0
    ref_chars: int = 0

    @property
    def errors(self) -> int:
        return self.sub + self.dels + self.ins


def score(references: list[str], hypotheses: list[str]) -> Score:
    """Normalise both sides and align words with jiwer; corpus totals plus counts per utterance."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs, hyps = [normalize(r) for r in references], [normalize(h) for h in hypotheses]
    kept = [i for i, r in enumerate(refs) if r]
    per: list[UtteranceErrors | None] = [None] * len(refs)
    if kept:
        words = _edits(jiwer.process_words([refs[i] for i in kept], [hyps[i] for i in kept]).alignments)
        chars = _edits(jiwer.process_characters([refs[i] for i in kept], [hyps[i] for i in kept]).alignments)
        for i, (sub, dels, ins), c in zip(kept, words, chars):
            per[i] = UtteranceErrors(len(refs[i].split()), sub, dels, ins, sum(c), len(refs[i]))
    scored = [u for u in per if u is not None]
    words = sum(u.ref_words for u in scored)
    sub, dels, ins = (sum(getattr(u, k) for u in scored) for k in ("sub", "dels", "ins"))
    char_errors, ref_chars = sum(u.char_errors for u in scored), sum(u.ref_chars for u in scored)
    return Score(wer=(sub + dels + ins) / words if words else float("nan"), sub=sub, dels=dels, ins=ins,
                 ref_words=words, n=len(scored), empty_references=len(refs) - len(scored),
                 norm_references=refs, norm_hypotheses=hyps, utterances=per,
                 cer=char_errors / ref_chars if ref_chars else float("nan"), char_errors=char_errors, ref_chars=ref_chars)


def _edits(alignments) -> list[tuple[int, int, int]]:
    """(substitutions, deletions, insertions) of each of jiwer's alignments (words or characters)."""
    out = []
    for chunks in alignments:
        counts = {"substitute": 0, "delete": 0, "insert": 0}
        for c in chunks:
            if c.type in counts:  # substitutions and deletions span reference units, insertions hypothesis units
                counts[c.type] += c.hyp_end_idx - c.hyp_start_idx if c.type == "insert" else c.ref_end_idx - c.ref_start_idx
        out.append((counts["substitute"], counts["delete"], counts["insert"]))
    return out
