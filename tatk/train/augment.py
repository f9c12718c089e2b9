"""Training-batch augmentation: SpecAugment-style masking of stored encoder features, and swapped tokens
in the transcript history the decoder reads. Validation and evaluation see neither.

Masks hide random bands of frames (time) and of feature dimensions (frequency), so the decoder cannot
lean on any single stretch of audio or any single dimension; on a small corpus this trades a little
training loss for lower held-out WER. Validation and evaluation never see masks.

Masked values are replaced by the clip's own per-dimension mean over its frames: that is what
``features.normalize = "utterance"`` maps to (about) zero, so a masked band reads as "no information"
rather than as a loud constant. (Zeros in the raw feature space would be an arbitrary, large offset for
an encoder whose frames are far from zero.)

Token swaps attack the other way a decoder avoids listening: under teacher forcing it reads the true
transcript so far, and an LLM can predict much of the next word from that history alone (it recites). Swapping
a share of the history tokens for other transcript tokens of the batch, targets unchanged, makes the history
unreliable, so the audio is the one source the decoder can trust.

Determinism: the masks and swaps of a batch are drawn from a generator seeded by the batch's name
(seed, rank, worker, round, index; see tatk/train/stream.py), never from a running random state, so a
resumed run replays exactly the same augmented batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from tatk.model.speech import IGNORE


def masks(cfg) -> bool:
    """Whether ``cfg`` (a tatk.train.recipe.AugmentConfig) masks any features."""
    return bool((cfg.time_masks and cfg.time_width) or (cfg.freq_masks and cfg.freq_width))


def mask_features(feats: np.ndarray, cfg, rng: np.random.Generator) -> np.ndarray:
    """A masked copy of one clip's features (T, D): ``cfg.time_masks`` bands of 0..``time_width`` frames and
    ``cfg.freq_masks`` bands of 0..``freq_width`` dimensions set to the clip's per-dimension mean."""
    t, d = feats.shape
    out = feats.copy()
    fill = feats.astype(np.float32).mean(axis=0).astype(feats.dtype)  # (D,)
    # A time mask never covers more than a fifth of a clip: short clips would otherwise lose most words.
    widest = min(cfg.time_width, t // 5)
    for _ in range(cfg.time_masks if widest > 0 else 0):
        width = int(rng.integers(0, widest + 1))
        start = int(rng.integers(0, t - width + 1))
        out[start:start + width] = fill
    for _ in range(cfg.freq_masks if cfg.freq_width > 0 else 0):
        width = int(rng.integers(0, min(cfg.freq_width, d) + 1))
        start = int(rng.integers(0, d - width + 1))
        out[:, start:start + width] = fill[start:start + width]
    return out


def augment_batch(samples: list, cfg, rng: np.random.Generator) -> list:
    """The batch's samples (tatk.train.stream.Sample) with masked features; lengths and texts are unchanged."""
    return [dataclasses.replace(s, feats=mask_features(s.feats, cfg, rng)) for s in samples]


def swap_tokens(batch: dict, share: float, rng: np.random.Generator) -> dict:
    """A collated batch whose ``input_ids`` have each transcript token (where ``labels`` are set, the end token
    aside) swapped, with probability ``share``, for a transcript token drawn from anywhere in the batch.
    ``labels`` are unchanged: every position still predicts the true next token."""
    ids, labels = batch["input_ids"].clone(), batch["labels"]
    # Transcript positions: labels set and the next label set too (the last labelled position is the end token).
    text = (labels != IGNORE) & torch.nn.functional.pad(labels[:, 1:] != IGNORE, (0, 1))
    rows, cols = text.nonzero(as_tuple=True)  # (N,) each
    if len(rows):
        swap = torch.from_numpy(rng.random(len(rows)) < share)
        pool = ids[rows, cols]
        picks = torch.from_numpy(rng.integers(0, len(pool), int(swap.sum())))
        ids[rows[swap], cols[swap]] = pool[picks]
    return {**batch, "input_ids": ids}
