"""A composite speech-to-text checkpoint (GLM-ASR, Whisper) gives tatk its encoder alone: the LLM / decoder beside it
in the checkpoint is never materialised (GLM-ASR-Nano's is 1.5 B of its 2.1 B parameters)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, GlmAsrConfig, GlmAsrForConditionalGeneration

from tatk.errors import UserError
from tatk.model.encoder import load_audio_model
from tatk.shard.encoders import FrozenEncoder

ENCODER_PREFIX = {"glmasr": "audio_tower.", "whisper": "model.encoder."}  # as save_pretrained names them


@pytest.mark.parametrize("kind", ["glmasr", "whisper"])
def test_the_encoder_gets_exactly_the_checkpoints_encoder_tensors(kind, tiny_encoders):
    """Every weight of the loaded encoder equals the checkpoint's tensor of that name, read straight from the file."""
    folder, prefix = tiny_encoders[kind], ENCODER_PREFIX[kind]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        expected = {k.removeprefix(prefix): f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    state = load_audio_model(str(folder), AutoConfig.from_pretrained(folder), torch.float32).state_dict()
    assert expected and set(expected) == {k for k in state if k in expected}
    assert not [k for k in state if k not in expected]  # nothing left at random
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["glmasr", "whisper"])
def test_a_checkpoint_lacking_encoder_weights_is_refused_by_name(kind, tiny_encoders, tmp_path):
    """Without one of its encoder's tensors a checkpoint would encode with a random layer: refused, the tensor named
    (after the whole model's loader, with transformers' own name mappings, found it missing too)."""
    folder, prefix = shutil.copytree(tiny_encoders[kind], tmp_path / kind), ENCODER_PREFIX[kind]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != prefix + "conv1.weight"}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"no weights for 1 of its encoder's tensors \((model\.audio_tower|encoder)\.conv1\.weight\)"):
        FrozenEncoder(str(folder), network=False).load_weights()  # as tatk shard, tatk export and training load it


PEAK = """import json, re, sys, torch
from transformers import AutoConfig, GlmAsrForConditionalGeneration
from tatk.model.encoder import load_audio_model
path, way = sys.argv[1:]
if way == "tatk":
    model = load_audio_model(path, AutoConfig.from_pretrained(path), torch.float32)
else:
    model = GlmAsrForConditionalGeneration.from_pretrained(path, dtype=torch.float32).model.audio_tower
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024)
"""


def test_a_glmasr_checkpoints_llm_is_not_loaded(tmp_path):
    """A bf16 GLM-ASR checkpoint whose LLM is 1.3 GB in fp32 (an 80,000 × 2,048 vocabulary, untied) and a tiny
    encoder, loaded in fp32: the process that takes the encoder out of the whole model (the direct library call)
    peaks at least 1 GB higher than the one that loads the encoder alone."""
    torch.manual_seed(0)
    config = GlmAsrConfig(
        audio_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=4, num_mel_bins=128),
        text_config=dict(model_type="llama", hidden_size=2048, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=80_000,
                         tie_word_embeddings=False),
        audio_token_id=127)
    model = GlmAsrForConditionalGeneration(config)
    llm_bytes = sum(p.numel() * 4 for p in model.model.language_model.parameters()) + model.lm_head.weight.numel() * 4
    model.to(torch.bfloat16).save_pretrained(tmp_path)  # as published: bf16, loaded in fp32 for a CPU
    del model
    peak = {way: json.loads(subprocess.run([sys.executable, "-c", PEAK, str(tmp_path), way], capture_output=True,
                                           text=True, check=True).stdout.split()[-1]) for way in ("whole", "tatk")}
    assert llm_bytes > 1.2e9 and peak["whole"] - peak["tatk"] > 1e9, (llm_bytes, peak)
