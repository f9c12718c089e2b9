"""Word timestamps by CTC forced alignment: a transcript is aligned to a CTC model's frame emissions.

The transcript comes from the LLM decoder; a separate CTC model (e.g. ``facebook/wav2vec2-base-960h``,
loaded with ``from_pretrained``) gives per-frame log-probabilities over its characters, and the Viterbi path
through the CTC trellis of the transcript's characters says which frames each character (so each word)
occupies. This is what WhisperX and tiny-audio do; written here in numpy because torchaudio's
``forced_align`` is not available everywhere the exported model runs.

Words the aligner cannot spell. Characters outside the aligner's vocabulary (after trying upper and lower
case) are dropped from the word's spelling. A word left with no spellable character (digits, symbols such
as "42" or "%") is not aligned: consecutive such words share the time between the end of the aligned word
before them and the start of the aligned word after them (the chunk's start or end at the edges), split in
proportion to their lengths in characters; when that gap is empty they get a zero-length span at that point.
When no path exists (more characters than frames) or nothing is spellable, all words of the chunk are spread
over it in proportion to their lengths, the same rule. Alignment never fails on what the decoder wrote.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_ALIGNER = "facebook/wav2vec2-base-960h"  # English characters, 20-ms frames; what tiny-audio uses
MIN_SAMPLES = 1_600  # shorter audio (the tail chunk of a long input can be a few ms) is padded with silence


def ctc_viterbi(log_probs: np.ndarray, targets: list[int], blank: int) -> list[tuple[int, int]] | None:
    """The most probable CTC path of ``targets`` through ``log_probs`` (frames T, vocabulary V).

    Returns, for each target token, the frames ``[first, last + 1)`` the path spends on it, or None when no
    path exists (T too short for the tokens and the blanks required between repeated ones). States are the
    usual CTC extension ``blank t0 blank t1 ... blank``; a state is entered from itself, the one before, or
    two before when that skips a blank between different tokens. Ties prefer staying, then one step.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    n_frames, n_tokens = lp.shape[0], len(targets)
    if n_tokens == 0:
        return []
    ext = np.full(2 * n_tokens + 1, blank, dtype=np.int64)
    ext[1::2] = targets
    n_states = len(ext)
    can_skip = np.zeros(n_states, dtype=bool)  # entering s from s-2 (skipping the blank between)
    can_skip[3::2] = ext[3::2] != ext[1:-2:2]
    score = np.full(n_states, -np.inf)
    score[:2] = lp[0, ext[:2]] if n_frames else -np.inf
    back = np.zeros((n_frames, n_states), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, n_frames):
        one = np.concatenate(([-np.inf], score[:-1]))
        two = np.where(can_skip, np.concatenate(([-np.inf, -np.inf], score[:-2])), -np.inf)
        cands = np.stack([score, one, two])
        back[t] = np.argmax(cands, axis=0)
        score = cands[back[t], np.arange(n_states)] + lp[t, ext]
    last = n_states - 1 if score[-1] >= score[-2] else n_states - 2
    if n_frames == 0 or not np.isfinite(score[last]):
        return None
    state_at = np.empty(n_frames, dtype=np.int64)
    for t in range(n_frames - 1, -1, -1):
        state_at[t] = last
        last -= int(back[t, last])  # (a numpy int8 would overflow past 127 states)
    spans = []
    for i in range(n_tokens):
        frames = np.flatnonzero(state_at == 2 * i + 1)
        spans.append((int(frames[0]), int(frames[-1]) + 1))
    return spans


def spread(lengths: list[int], start: float, end: float) -> list[tuple[float, float]]:
    """``start``-``end`` split into consecutive spans in proportion to ``lengths`` (each counted as ≥ 1)."""
    weights = np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
    edges = start + (end - start) * np.concatenate(([0.0], np.cumsum(weights) / weights.sum()))
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]


def spell(word: str, vocab: dict[str, int]) -> list[int]:
    """The aligner's token ids for the characters of ``word`` it can spell (as written, upper or lower case)."""
    ids = []
    for ch in word:
        for form in (ch, ch.upper(), ch.lower()):
            if form in vocab:
                ids.append(vocab[form])
                break
    return ids


def word_spans(log_probs: np.ndarray, words: list[str], vocab: dict[str, int], blank: int,
               delimiter: int | None, seconds_per_frame: float) -> list[tuple[float, float]]:
    """(start, end) seconds of each of ``words`` within the emissions' audio, by the rule in the module doc."""
    spelled = [spell(w, vocab) for w in words]
    aligned = [i for i, ids in enumerate(spelled) if ids]
    duration = len(log_probs) * seconds_per_frame
    targets, owner = [], []  # the token sequence, and which word each token spells (-1: a delimiter)
    for k, i in enumerate(aligned):
        if k and delimiter is not None:
            targets.append(delimiter)
            owner.append(-1)
        targets += spelled[i]
        owner += [i] * len(spelled[i])
    paths = ctc_viterbi(log_probs, targets, blank) if targets else None
    if paths is None:
        return spread([len(w) for w in words], 0.0, duration)
    times: dict[int, tuple[float, float]] = {}
    for (first, stop), i in zip(paths, owner):
        if i >= 0:
            a, b = times.get(i, (first * seconds_per_frame, stop * seconds_per_frame))
            times[i] = (min(a, first * seconds_per_frame), max(b, stop * seconds_per_frame))
    out: list[tuple[float, float] | None] = [times.get(i) for i in range(len(words))]
    i = 0
    while i < len(words):  # fill each run of unspellable words from the gap around it
        if out[i] is not None:
            i += 1
            continue
        j = i
        while j < len(words) and out[j] is None:
            j += 1
        gap_start = out[i - 1][1] if i else 0.0
        gap_end = out[j][0] if j < len(words) else duration
        out[i:j] = spread([len(w) for w in words[i:j]], gap_start, max(gap_start, gap_end))
        i = j
    return out  # type: ignore[return-value]


def word_options(config, return_timestamps, aligner: str | None) -> tuple[dict, dict]:
    """The pipeline's extra (preprocess, postprocess) parameters for ``return_timestamps="word"``; fails, before
    any audio is decoded, when there is no aligner (none exported, none given) or the option is unknown."""
    if return_timestamps in (None, True, False):
        return {}, {}
    if return_timestamps != "word":
        raise ValueError(f'return_timestamps must be True, False or "word", not {return_timestamps!r}')
    if not (aligner or getattr(config, "aligner", "")):
        raise ValueError('return_timestamps="word" needs a CTC aligner: this model was exported without one. '
                         f"Export it with `tatk export --aligner {DEFAULT_ALIGNER}` (or any CTC model's id or folder), "
                         "or pass aligner=ID_OR_FOLDER to the call")
    return {"keep_wave": True}, {"aligner": aligner}


class CtcAligner:
    """A CTC model with its feature extractor and character vocabulary, aligning transcripts to audio."""

    def __init__(self, model, extractor, vocab: dict[str, int], delimiter: str | None = "|"):
        self.model, self.extractor = model.eval(), extractor
        self.blank = int(model.config.pad_token_id)  # transformers' CTC heads use the pad id as the blank
        self.delimiter = vocab.get(delimiter) if delimiter else None
        # single characters only: the delimiter and special tokens ("<pad>", "<unk>") are never spelled
        self.vocab = {k: v for k, v in vocab.items() if len(k) == 1 and v != self.delimiter and v != self.blank}

    @classmethod
    def load(cls, name: str, subfolder: str = "", revision: str | None = None, device="cpu", **kwargs) -> CtcAligner:
        """A CTC model by Hub id or folder (``subfolder`` within it), e.g. ``facebook/wav2vec2-base-960h``."""
        from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer

        where = dict(kwargs, subfolder=subfolder, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(name, **where)
        model = AutoModelForCTC.from_pretrained(name, **where).to(device)
        extractor = AutoFeatureExtractor.from_pretrained(name, **where)
        return cls(model, extractor, tokenizer.get_vocab(), getattr(tokenizer, "word_delimiter_token", None))

    @torch.no_grad()
    def log_probs(self, wave: np.ndarray) -> np.ndarray:
        """(frames, vocabulary) log-probabilities of a 16-kHz waveform."""
        inputs = self.extractor(wave, sampling_rate=16_000, return_tensors="pt")
        values = inputs["input_values"].to(self.model.device, self.model.dtype)
        logits = self.model(values).logits[0].float()
        return torch.log_softmax(logits, dim=-1).cpu().numpy()

    def words(self, wave: np.ndarray, text: str, offset: float = 0.0) -> list[dict]:
        """``[{"text": word, "timestamp": (start, end)}]`` for ``text`` spoken in ``wave``, times + ``offset``."""
        words = text.split()
        if not words:
            return []
        duration = len(wave) / 16_000
        padded = np.pad(wave, (0, max(0, MIN_SAMPLES - len(wave))))  # a few ms of audio still gives frames
        lp = self.log_probs(padded)
        spans = word_spans(lp, words, self.vocab, self.blank, self.delimiter, len(padded) / 16_000 / max(len(lp), 1))
        return [{"text": w, "timestamp": (round(offset + min(a, duration), 3), round(offset + min(b, duration), 3))}
                for w, (a, b) in zip(words, spans)]
