"""Encoder features → normalisation → projector → spliced into a causal LM's prompt → greedy transcript.

Shared by training (``tatk.train.speechlm.SpeechLM``) and the exported model (``modeling_tatk.TatkAsrModel``), so
the exported model decodes exactly as ``tatk`` does: the prompt is

    <prefix: template up to the audio> <audio>×n <suffix: rest of user turn + assistant header>

and the ``<audio>`` placeholder positions are overwritten with projected frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IGNORE = -100


class FeatureNorm(nn.Module):
    """Normalise encoder frames (B, T, D) per dimension; frames at or past ``lens`` come out as exact zeros.

    ``utterance`` uses each clip's own mean/std over its valid frames: random or un-normalised encoders
    have wildly varying per-dimension scales, and this alone took a prototype from 98% to 28% WER.
    ``global`` uses the manifest's corpus statistics (kept as buffers, so they travel with the weights).
    """

    def __init__(self, mode: str, dim: int, mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        self.mode = mode
        if mode == "global":
            self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0] * dim, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std if std is not None else [1.0] * dim, dtype=torch.float32).clamp_min(1e-5))

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lens[:, None]).unsqueeze(-1)  # (B, T, 1)
        if self.mode == "utterance":
            n = lens.clamp_min(1).to(x.dtype)[:, None, None]
            mean = (x * valid).sum(1, keepdim=True) / n
            var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / n
            x = (x - mean) / (var + 1e-5).sqrt()
        elif self.mode == "global":
            x = (x - self.mean) / self.std
        return x * valid


@dataclass
class PromptLayout:
    """Token ids around the audio, fixed for a run: rows are prefix + audio×n + suffix + target + end."""

    prefix: list[int]
    suffix: list[int]
    end_id: int
    audio_id: int
    pad_id: int

    def row(self, n_audio: int, target: list[int]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one training row; labels are IGNORE outside target + end."""
        head = self.prefix + [self.audio_id] * n_audio + self.suffix
        return head + target + [self.end_id], [IGNORE] * len(head) + target + [self.end_id]


class SpeechDecoding:
    """Splicing and greedy decoding for a module with ``llm``, ``norm``, ``projector`` and ``layout``."""

    def embed(self, input_ids: torch.Tensor, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, H) with projected frames written over the audio placeholders.

        feats (B, T, D), feat_lens (B,); row b must hold exactly output_length(feat_lens[b]) placeholders.
        """
        audio = self.projector(self.norm(feats, feat_lens), feat_lens)  # (B, T', H)
        n_out = torch.tensor([self.projector.output_length(int(n)) for n in feat_lens], device=feats.device)
        frames = audio[torch.arange(audio.shape[1], device=feats.device)[None, :] < n_out[:, None]]  # (ΣT', H)
        is_audio = input_ids == self.layout.audio_id
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_audio, self.layout.pad_id))
        return embeds.masked_scatter(is_audio.unsqueeze(-1), frames.to(embeds.dtype))

    @torch.no_grad()
    def generate_ids(self, feats: torch.Tensor, feat_lens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy reply token ids (B, new) for features (B, T, D) with lengths (B,); every row needs ≥ 1 audio position.

        Rows are left-padded with an attention mask, so each row is decoded as if alone, with a KV cache.
        """
        lay = self.layout
        n_out = [self.projector.output_length(int(n)) for n in feat_lens]
        rows = [lay.prefix + [lay.audio_id] * n + lay.suffix for n in n_out]
        width = max(map(len, rows))
        ids = torch.tensor([[lay.pad_id] * (width - len(r)) + r for r in rows], device=feats.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=feats.device)
        return self.llm.generate(
            inputs_embeds=self.embed(ids, feats, feat_lens), attention_mask=mask, max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, eos_token_id=lay.end_id, pad_token_id=lay.pad_id,
        )
