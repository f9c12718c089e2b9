"""From stored samples to model batches: decode a tar sample, tokenize its transcript, and pad a list of
samples into one right-padded batch whose LLM rows hold the prompt, the audio placeholders and the text.

``length_batches`` cuts a length-sorted group into batches under a token budget (similar lengths pad little).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from tatk.model.speech import IGNORE, PromptLayout


@dataclass
class Sample:
    key: str  # the utterance's key in its tar
    feats: np.ndarray | bytes  # (T, D) float16 as stored; audio shards: the FLAC bytes (decoded in collate,
    # so the shuffle buffer holds compressed audio, not 30-s log-mels)
    text: str  # reference transcript
    target: list[int]  # transcript token ids
    n_audio: int  # LLM positions the projected audio takes
    n_tokens: int  # full row length: prompt + audio + transcript + end
    n_frames: int  # encoder frames (T); for audio shards, the count `tatk shard` recorded
    origin: tuple[int, int] = (0, 0)  # (training set, epoch) it was read in; set by the training stream


class Codec:
    """Turns a stored sample into a ``Sample`` and lists of samples into model batches.

    ``audio`` (tatk.train.tower.TowerInputs) is set for audio shards: batches then carry the encoder's
    prepared inputs instead of features.
    """

    def __init__(self, tokenizer, layout: PromptLayout, output_length: Callable[[int], int], audio=None):
        self.tokenizer, self.layout, self.output_length, self.audio = tokenizer, layout, output_length, audio
        self.overhead = len(layout.prefix) + len(layout.suffix) + 1

    def decode(self, raw: dict) -> Sample:
        text = raw["txt"].decode("utf-8")
        if self.audio is not None:
            feats, n_frames = raw["flac"], json.loads(raw["json"])["n_frames"]
        else:
            feats = np.load(io.BytesIO(raw["feats.npy"]))
            n_frames = feats.shape[0]
        target = self.tokenizer(text, add_special_tokens=False).input_ids
        n_audio = self.output_length(n_frames)
        return Sample(raw["__key__"], feats, text, target, n_audio, self.overhead + n_audio + len(target), n_frames)

    def collate(self, samples: list[Sample]) -> dict:
        """Right-padded batch: input_ids/labels/attention_mask (B, L), feats (B, T, D) float32 (audio shards:
        the encoder's prepared inputs (B, C, S)), feat_lens (B,) in encoder frames, plus plain counts
        (n_samples, real_tokens, padded_tokens), reference texts and sample keys."""
        rows = [self.layout.row(s.n_audio, s.target) for s in samples]
        width, frames = max(len(ids) for ids, _ in rows), max(s.n_frames for s in samples)
        b = len(samples)
        ids = torch.full((b, width), self.layout.pad_id, dtype=torch.long)
        labels = torch.full((b, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        if self.audio is not None:
            feats = self.audio.batch([self.audio.prepare(s.feats) for s in samples])
        else:
            feats = torch.zeros((b, frames, samples[0].feats.shape[1]), dtype=torch.float32)
            for i, s in enumerate(samples):
                feats[i, : s.n_frames] = torch.from_numpy(s.feats.astype(np.float32))
        for i, (row, lab) in enumerate(rows):
            ids[i, : len(row)], labels[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), torch.tensor(lab), 1
        real = sum(len(r) for r, _ in rows)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "feats": feats,
                "feat_lens": torch.tensor([s.n_frames for s in samples]),
                "n_samples": b, "real_tokens": real, "padded_tokens": b * width, "texts": [s.text for s in samples],
                "keys": [s.key for s in samples], "origins": [s.origin for s in samples]}


def length_batches(samples: list[Sample], max_tokens: int) -> list[list[Sample]]:
    """Sort by length and cut greedily so rows × longest row ≤ max_tokens; similar lengths pad little."""
    batches: list[list[Sample]] = []
    for s in sorted(samples, key=lambda s: s.n_tokens):
        if batches and (len(batches[-1]) + 1) * s.n_tokens <= max_tokens:
            batches[-1].append(s)
        else:
            batches.append([s])
    return batches
