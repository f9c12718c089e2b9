"""Tiny random models of the real architectures, for tests and CPU demos.

Each builder writes a folder with ``save_pretrained`` (weights, config, preprocessor files), so the
folder loads by path through exactly the code a Hub id takes. Weights are random but seeded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GlmAsrConfig,
    GlmAsrForConditionalGeneration,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

ENCODER_KINDS = ("glmasr", "whisper", "hubert", "wav2vec2")


def build_tiny_encoder(kind: str, out_dir: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Save a tiny random encoder checkpoint of architecture ``kind`` (one of ``ENCODER_KINDS``) to ``out_dir``.

    GLM-ASR and Whisper are saved as their full speech-to-text models (encoder + small decoder), as on
    the Hub, so loading exercises the "take the encoder out of the composite model" path.
    """
    out = Path(out_dir)
    torch.manual_seed(seed)
    if kind == "glmasr":
        config = GlmAsrConfig(
            audio_config=dict(
                hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=4, num_mel_bins=128,
            ),
            text_config=dict(
                model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, vocab_size=128, head_dim=16,
            ),
            audio_token_id=127,
        )
        model = GlmAsrForConditionalGeneration(config)
        extractor = WhisperFeatureExtractor(feature_size=128)
    elif kind == "whisper":
        config = WhisperConfig(
            d_model=hidden, encoder_layers=layers, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=4 * hidden, decoder_ffn_dim=4 * hidden,
            num_mel_bins=80, vocab_size=128, max_source_positions=1500, max_target_positions=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        )
        model = WhisperForConditionalGeneration(config)
        extractor = WhisperFeatureExtractor(feature_size=80)
    elif kind in ("hubert", "wav2vec2"):
        common = dict(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=4 * hidden,
            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            feat_extract_norm="layer", do_stable_layer_norm=True,
        )
        model = HubertModel(HubertConfig(**common)) if kind == "hubert" else Wav2Vec2Model(Wav2Vec2Config(**common))
        extractor = Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
        )
    else:
        raise ValueError(f"unknown tiny encoder kind {kind!r}; expected one of {ENCODER_KINDS}")
    model.eval()
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Save a tiny random encoder (for tests and CPU demos).")
    parser.add_argument("kind", choices=ENCODER_KINDS)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64, help="width (the features' dim)")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers")
    args = parser.parse_args()
    print(build_tiny_encoder(args.kind, args.out_dir, seed=args.seed, hidden=args.hidden, layers=args.layers))
