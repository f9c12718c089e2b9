"""GLM-ASR-Nano's encoder + Qwen3-0.6B at their published shapes (random weights) through shard → stage 1 →
stage 2 (LoRA) → eval → export → transformers.pipeline, on 2 clips: tools/rehearse.py, as a user runs it.

The clips are sharded with `--window fit` (a few seconds of encoder work per clip instead of a 30-s window
each), which also puts the fit window through training, eval and the exported pipeline at real size."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO


def qwen3_0_6b_parameters() -> int:
    """Qwen3-0.6B's parameter count from its published shape, by hand (tied embeddings: one 151936 × 1024 matrix)."""
    hidden, inter, layers, heads, kv, head_dim, vocab = 1024, 3072, 28, 16, 8, 128, 151936
    attention = hidden * heads * head_dim + 2 * hidden * kv * head_dim + heads * head_dim * hidden + 2 * head_dim
    mlp = 3 * hidden * inter
    return layers * (attention + mlp + 2 * hidden) + vocab * hidden + hidden


def glmasr_nano_encoder_parameters() -> int:
    """GLM-ASR-Nano's encoder (32 × 1280, 128 mels, conv stem, biased attention but k, GELU MLP) by hand."""
    d, inter, layers, mels = 1280, 5120, 32, 128
    conv = mels * d * 3 + d + d * d * 3 + d
    attention = 4 * d * d + 3 * d  # q, v, o carry biases; k does not
    mlp = 2 * d * inter + inter + d
    return conv + layers * (attention + mlp + 4 * d) + 2 * d


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~4 min on 2 idle cores; far longer when the machine is shared
def test_glmasr_qwen3_at_real_size(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "tools/rehearse.py", "--family", "glmasr-qwen3", "--clips", "2", "--window", "fit",
                           "--out", str(tmp_path / "work"), "--json", str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (r,) = json.loads(out.read_text())
    assert r["window"] == "fit" and r["feature_dim"] == 1280
    assert r["stage1"]["llm"] == qwen3_0_6b_parameters()
    assert r["encoder_params"] == glmasr_nano_encoder_parameters()
    # stage 1 trains the projector alone (mlp 1280·4 → 2048 → 1024, with its norms); stage 2 adds LoRA (r 64, q and v)
    projector = 5120 * 2048 + 2048 + 2048 + 2048 * 1024 + 1024 + 1024
    assert r["stage1"]["trainable"] == projector
    lora = 28 * 64 * ((1024 + 2048) + (1024 + 1024))
    assert r["stage2"]["trainable"] == projector + lora
    for stage in ("shard", "train stage 1", "train stage 2", "eval (shards)", "export", "pipeline"):
        assert r["stages"][stage]["wall_s"] > 0 and r["stages"][stage]["peak_rss_gib"] > 0.5, stage
    # the exported pipeline, from audio, transcribes exactly as eval does from the stored (float32) features
    assert len(r["pipeline"]) == 2 and r["pipeline"] == r["eval_hyps"]
    # random weights make near-constant transcripts, so compare what they are made from too: the pipeline's
    # encoder features of each clip equal the stored (float32) ones, i.e. it pads with the same fit window
    assert r["feature_max_diff"] < 1e-3
    assert "| train stage 1 |" in proc.stdout
    print(proc.stdout)  # the rehearsal's table (pytest -s shows it)
