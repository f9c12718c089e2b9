"""Encoder features → normalisation → projector → spliced into a causal LM's prompt → transcript (greedy or beam).

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
# Decoding options passed through to transformers' ``generate``; decoding stays deterministic (no sampling).
GENERATE_OPTIONS = ("max_new_tokens", "num_beams", "length_penalty", "repetition_penalty", "no_repeat_ngram_size",
                    "early_stopping", "streamer")


def decoding_options(options: dict) -> dict:
    """``options`` checked against GENERATE_OPTIONS: anything else is refused by name, not silently ignored."""
    unknown = sorted(set(options) - set(GENERATE_OPTIONS))
    if unknown:
        raise TypeError(f"unsupported decoding option(s) {unknown}; tatk models take {list(GENERATE_OPTIONS)}")
    return {k: v for k, v in options.items() if v is not None}


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
    """Splicing and decoding (greedy, or beam search) for a module with ``llm``, ``norm``, ``projector`` and ``layout``."""

    def project(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected frames (B, T', H) of features (B, T, D) with lengths (B,), and each row's valid count n_out (B,)."""
        audio = self.projector(self.norm(feats, feat_lens), feat_lens)
        n_out = torch.tensor([self.projector.output_length(int(n)) for n in feat_lens], device=feats.device)
        return audio, n_out

    def embed(self, input_ids: torch.Tensor, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, H) with projected frames written over the audio placeholders.

        feats (B, T, D), feat_lens (B,); row b must hold exactly output_length(feat_lens[b]) placeholders.
        """
        return self.splice(input_ids, *self.project(feats, feat_lens))

    def splice(self, input_ids: torch.Tensor, audio: torch.Tensor, n_out: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, H) of ``input_ids`` with the first n_out[b] of ``audio`` (B, T', H) written over row b's placeholders."""
        frames = audio[torch.arange(audio.shape[1], device=audio.device)[None, :] < n_out[:, None]]  # (ΣT', H)
        is_audio = input_ids == self.layout.audio_id
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_audio, self.layout.pad_id))
        return embeds.masked_scatter(is_audio.unsqueeze(-1), frames.to(embeds.dtype))

    @torch.no_grad()
    def generate_ids(self, feats: torch.Tensor, feat_lens: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
        """Reply token ids (B, new) for features (B, T, D) with lengths (B,); every row needs ≥ 1 audio position.

        Greedy by default; ``options`` (GENERATE_OPTIONS: ``num_beams``, ``length_penalty``, ``repetition_penalty``,
        a ``streamer``, ...) go to transformers' own ``generate``, which decodes from ``inputs_embeds`` (the spliced
        prompt) with beam search as well, so no hand-written search is needed. Rows are left-padded with an
        attention mask, so each row is decoded as if alone, with a KV cache.
        """
        options = decoding_options(options)
        lay = self.layout
        n_out = [self.projector.output_length(int(n)) for n in feat_lens]
        rows = [lay.prefix + [lay.audio_id] * n + lay.suffix for n in n_out]
        width = max(map(len, rows))
        ids = torch.tensor([[lay.pad_id] * (width - len(r)) + r for r in rows], device=feats.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=feats.device)
        penalty = options.pop("repetition_penalty", 1.0)
        if penalty != 1.0:
            # Not generate(repetition_penalty=...): transformers takes the prompt length to skip from the attention
            # mask's left padding, but from inputs_embeds the ids it penalises are the new tokens only, so padded rows
            # of a batch would skip their first new tokens. The same processor, built here, treats every row alike.
            from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

            options["logits_processor"] = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty)])
        options.setdefault("num_beams", 1)
        options["max_new_tokens"] = options.get("max_new_tokens") or max_new_tokens
        return self.llm.generate(
            inputs_embeds=self.embed(ids, feats, feat_lens), attention_mask=mask, do_sample=False,
            eos_token_id=lay.end_id, pad_token_id=lay.pad_id, **options,
        )
