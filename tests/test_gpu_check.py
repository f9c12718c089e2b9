"""tools/gpu_check.sh --cpu: the GPU check's every step (shard with 30s / fit / audio, stage 1 from shards and with
the encoder every step, stage 2, the SmolLM3 family, ZeRO-2 and ZeRO-3 under accelerate launch) at tiny sizes."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import REPO


@pytest.mark.slow
def test_gpu_check_smoke_mode_runs_every_check(tmp_path):
    rows_file = tmp_path / "rows.json"
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--cpu", "--out", str(tmp_path / "work"), "--json", str(rows_file)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = {r["check"]: r for r in json.loads(rows_file.read_text())}
    for name in ("shard, GLM-ASR 30s encoder", "shard, GLM-ASR fit encoder", "shard, Whisper 30s encoder"):
        assert rows[name]["audio_h_per_gpu_h"] > 0, name
    trains = [k for k in rows if not k.startswith("shard")]
    assert len(trains) == 8 and all(rows[k]["samples_per_s"] > 0 and rows[k]["steps"] == 1 for k in trains)
    assert {k.rsplit(", ", 1)[-1] for k in trains} >= {"ZeRO-2", "ZeRO-3"}
    for row in rows.values():
        assert f"| {row['check']} |" in proc.stdout
    # "same batches": the run from shards and the run that encodes every step see the same samples and tokens, so
    # their first losses agree up to the fp16 rounding of stored features
    runs = tmp_path / "work" / "runs"
    first = {}
    for kind in ("from-shards", "encoder-every-step"):
        (run,) = runs.glob(f"stage-1-glm-asr-qwen3-0.6b-{kind}")
        first[kind] = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    a, b = first.values()
    assert a["real_token_fraction"] == b["real_token_fraction"]
    assert abs(a["loss"] - b["loss"]) < 1e-3
