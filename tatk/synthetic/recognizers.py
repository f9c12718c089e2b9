"""Tiny random speech recognizers of other architectures, complete enough for
``transformers.pipeline("automatic-speech-recognition", model=folder)``: model, feature extractor and tokenizer.

Baselines for ``tatk eval`` tests (their transcripts are random; the tests check the machinery and the files),
and tiny CTC models with a character vocabulary. Weights are random but seeded; nothing is downloaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

RECOGNIZER_KINDS = ("whisper", "wav2vec2-ctc")
# facebook/wav2vec2-base-960h's vocabulary layout: specials, word delimiter, upper-case letters, apostrophe
CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]
WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>", "<|notimestamps|>"]


def _whisper(out: Path, hidden: int, layers: int) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # byte-level BPE without merges: every byte is a token, so any id the random model emits decodes
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    end = WHISPER_SPECIALS[0]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], unk_token=end, bos_token=end, eos_token=end, pad_token=end)
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    ids = dict(zip(WHISPER_SPECIALS, tokenizer.convert_tokens_to_ids(WHISPER_SPECIALS)))
    config = WhisperConfig(
        d_model=hidden, encoder_layers=layers, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=4 * hidden, decoder_ffn_dim=4 * hidden, num_mel_bins=80, vocab_size=len(tokenizer),
        max_source_positions=1500, max_target_positions=64, pad_token_id=ids[end], bos_token_id=ids[end],
        eos_token_id=ids[end], decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config.no_timestamps_token_id = ids["<|notimestamps|>"]
    model.generation_config.max_length = config.max_target_positions
    model.save_pretrained(out)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(out)


def _wav2vec2_ctc(out: Path, hidden: int, layers: int) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.json"
        vocab.write_text(json.dumps({c: i for i, c in enumerate(CTC_VOCAB)}))
        tokenizer = Wav2Vec2CTCTokenizer(str(vocab), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")
    config = Wav2Vec2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=4 * hidden,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
        do_stable_layer_norm=True, vocab_size=len(CTC_VOCAB), pad_token_id=0,
    )
    Wav2Vec2ForCTC(config).eval().save_pretrained(out)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    Wav2Vec2Processor(extractor, tokenizer).save_pretrained(out)


def build_tiny_recognizer(kind: str, out_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Save a tiny random recognizer of ``kind`` (one of ``RECOGNIZER_KINDS``) to ``out_dir``; returns the folder."""
    builders = {"whisper": _whisper, "wav2vec2-ctc": _wav2vec2_ctc}
    if kind not in builders:
        raise ValueError(f"unknown tiny recognizer kind {kind!r}; expected one of {RECOGNIZER_KINDS}")
    out = Path(out_dir)
    torch.manual_seed(seed)
    builders[kind](out, hidden, layers)
    return out
