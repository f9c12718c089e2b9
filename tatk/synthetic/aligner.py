"""A tiny CTC aligner for espeak-ng speech: a small ``Wav2Vec2ForCTC`` with a character vocabulary (the layout
of ``facebook/wav2vec2-base-960h``: upper-case letters, ``'``, ``|`` between words, ``<pad>`` as the blank),
trained for a few minutes on synthetic sentences, saved with ``save_pretrained`` so it loads by folder exactly
as a Hub aligner does. Word-start ground truth for held-out clips comes from espeak-ng's word events.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import soxr
import torch
from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

from tatk.synthetic.sentences import random_sentence
from tatk.synthetic.speech import synthesize, word_starts
from tatk.synthetic.voices import VARIANTS, VOICES

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"


def clip_plans(n: int, seed: int) -> list[tuple[str, str, int, int]]:
    """(text, voice, words per minute, pitch) of ``n`` random utterances, a pure function of ``seed``."""
    r = random.Random(f"aligner:{seed}")
    plans = []
    for _ in range(n):
        text = random_sentence(r)
        voice = f"{r.choice(VOICES)}+{r.choice(sorted(VARIANTS))}"
        plans.append((text, voice, r.randrange(130, 201), r.randrange(30, 71, 5)))
    return plans


def spoken_clips(n: int, seed: int) -> list[dict]:
    """``n`` random sentences spoken by random espeak-ng voices: ``{"text", "wave" (16 kHz), "starts"}``, the
    starts in seconds per word, None where espeak-ng reported none (see ``word_starts``)."""
    clips = []
    for text, voice, wpm, pitch in clip_plans(n, seed):
        wave, rate = synthesize(text, voice, rate=wpm, pitch=pitch)
        wave = soxr.resample(wave, rate, 16_000).astype(np.float32)
        clips.append({"text": text, "wave": wave, "starts": word_starts(text)})
    return clips


def _processor_parts() -> tuple[Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor]:
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(LETTERS)}}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(str(Path(tmp) / "vocab.json"), pad_token="<pad>", unk_token="<unk>",
                                         word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=False)
    return tokenizer, extractor


def _model(vocab_size: int, seed: int) -> Wav2Vec2ForCTC:
    torch.manual_seed(seed)
    config = Wav2Vec2Config(  # 20-ms frames (strides 5·4·4·4 = 320 samples), as wav2vec2-base
        vocab_size=vocab_size, hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
        conv_dim=(64, 64, 64, 64), conv_stride=(5, 4, 4, 4), conv_kernel=(10, 8, 4, 4), num_feat_extract_layers=4,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group", mask_time_prob=0.0,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
        layerdrop=0.0, pad_token_id=0, ctc_loss_reduction="mean", ctc_zero_infinity=True,
    )
    return Wav2Vec2ForCTC(config)


def _batch(clips: list[dict], tokenizer, extractor) -> dict[str, torch.Tensor]:
    inputs = extractor([c["wave"] for c in clips], sampling_rate=16_000, padding=True, return_tensors="pt")
    labels = tokenizer([c["text"] for c in clips], padding=True, return_tensors="pt")
    targets = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
    return {"input_values": inputs["input_values"], "labels": targets}


def build_tiny_aligner(out_dir: str | Path, n_clips: int = 240, steps: int = 600, batch_size: int = 8, seed: int = 0,
                       log=None) -> Path:
    """Train a tiny character CTC model on ``n_clips`` espeak-ng sentences for ``steps`` and save it (model,
    tokenizer, feature extractor) to ``out_dir``. ``steps=0`` saves the random model (enough for plumbing tests)."""
    out = Path(out_dir)
    tokenizer, extractor = _processor_parts()
    model = _model(len(tokenizer.get_vocab()), seed)
    if steps:
        clips = sorted(spoken_clips(n_clips, seed), key=lambda c: len(c["wave"]))  # similar lengths batch together
        batches = [clips[i:i + batch_size] for i in range(0, len(clips), batch_size)]
        optim = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=2e-3, total_steps=steps, pct_start=0.15)
        order, model = random.Random(seed), model.train()
        for step in range(steps):
            loss = model(**_batch(order.choice(batches), tokenizer, extractor)).loss
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            if log and (step % 50 == 0 or step == steps - 1):
                log(f"step {step}: CTC loss {loss.item():.3f}")
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    extractor.save_pretrained(out)
    return out
