"""The encoders and LLMs the recipes name, at their published shapes, with random weights, saved offline.

Each ``PUBLISHED`` entry is written once here with its source (the Hub repo's ``config.json``); only the fields
that set a shape (or change the computation) are listed, the rest are transformers' defaults. Weights are
random (seeded) and saved bf16 with ``save_pretrained``, so a folder loads by path exactly like the Hub id, at
the real size: what ``tools/rehearse.py`` and the real-size tests run through shard → train → eval → export.

The LLMs get a small tokenizer trained here (``tinyllm.train_tokenizer``: the real ones cannot be downloaded),
with the family's chat template; the embedding keeps the published row count (151,936 / 128,256), so the LM
head, the largest matrix of both, has its real cost.

    python -m tatk.synthetic.published glmasr-nano runs/real/glmasr-nano
"""

from __future__ import annotations

from pathlib import Path

import torch

from tatk.synthetic.tinyllm import SMOLLM3_TEMPLATE, _save, train_tokenizer

# name: (Hub id, kind, config fields). Sources: each repo's config.json on the Hub, and for GLM-ASR-Nano's
# encoder transformers' GlmAsrEncoderConfig(), whose defaults are that encoder (32 × 1280, 20 heads, 128 mels).
PUBLISHED: dict[str, tuple[str, str, dict]] = {
    "glmasr-nano": ("zai-org/GLM-ASR-Nano-2512", "glmasr_encoder", {}),
    "whisper-large-v3-turbo": ("openai/whisper-large-v3-turbo", "whisper", dict(
        d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, decoder_layers=4,
        decoder_attention_heads=20, decoder_ffn_dim=5120, num_mel_bins=128, vocab_size=51866,
        max_source_positions=1500, max_target_positions=448, pad_token_id=50256, bos_token_id=50257,
        eos_token_id=50257, decoder_start_token_id=50258)),
    "hubert-large": ("facebook/hubert-large-ls960-ft", "hubert", dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, conv_dim=[512] * 7,
        conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2], num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16)),
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B", "qwen3", dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
        rope_theta=1_000_000.0, tie_word_embeddings=True)),
    "smollm3-3b": ("HuggingFaceTB/SmolLM3-3B", "smollm3", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=4, max_position_embeddings=65536, rms_norm_eps=1e-6, rope_theta=5_000_000.0,
        tie_word_embeddings=True, no_rope_layers=[int((i + 1) % 4 != 0) for i in range(36)])),
}
ENCODERS = ("glmasr-nano", "whisper-large-v3-turbo", "hubert-large")
LLMS = ("qwen3-0.6b", "smollm3-3b")


def _random(cls, config, seed: int) -> torch.nn.Module:
    """``cls(config)`` with seeded random weights, built directly in bf16 (half the memory of fp32)."""
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        return cls(config).eval()
    finally:
        torch.set_default_dtype(default)


def encoder_model(name: str, seed: int = 0):
    """(network, feature extractor) of a published encoder, random weights, not saved."""
    import transformers

    _, kind, fields = PUBLISHED[name]
    if kind == "glmasr_encoder":
        model = _random(transformers.GlmAsrEncoder, transformers.GlmAsrEncoderConfig(**fields), seed)
        return model, transformers.WhisperFeatureExtractor(feature_size=128)
    if kind == "whisper":
        model = _random(transformers.WhisperForConditionalGeneration, transformers.WhisperConfig(**fields), seed)
        return model, transformers.WhisperFeatureExtractor(feature_size=fields["num_mel_bins"])
    model = _random(transformers.HubertModel, transformers.HubertConfig(**fields), seed)
    extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                      do_normalize=True, return_attention_mask=True)
    return model, extractor


def build_encoder(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Save a published encoder (random weights, bf16) and its feature extractor to ``out_dir``."""
    out = Path(out_dir)
    model, extractor = encoder_model(name, seed)
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    return out


def build_llm(name: str, out_dir: str | Path, texts: list[str] | None = None, seed: int = 0) -> Path:
    """Save a published LLM (random weights, bf16) with a tokenizer trained on ``texts`` to ``out_dir``."""
    import transformers

    _, kind, fields = PUBLISHED[name]
    tok = train_tokenizer(texts or ["hello world"], vocab_size=2000)
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    if kind == "smollm3":
        tok.chat_template = SMOLLM3_TEMPLATE
        model = _random(transformers.SmolLM3ForCausalLM, transformers.SmolLM3Config(**fields, **ids), seed)
    else:
        model = _random(transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**fields, **ids), seed)
    return _save(model, tok, Path(out_dir))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Save a published encoder or LLM with random weights (bf16).")
    parser.add_argument("name", choices=sorted(PUBLISHED))
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    build = build_encoder if args.name in ENCODERS else build_llm
    print(build(args.name, args.out_dir))
