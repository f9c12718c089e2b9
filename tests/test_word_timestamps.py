"""Word timestamps: `tatk export --aligner`, `pipe(x, return_timestamps="word")` in a fresh offline process on an
export moved away from where it was made, long audio, batching, the error without an aligner, and the word
starts of a tiny trained CTC aligner against espeak-ng's own word events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tatk

SR = 16_000

# Runs in a fresh interpreter from another working directory, as a user would.
JOBS = r"""
import json, sys
import numpy as np
from transformers import pipeline

spec = json.load(open(sys.argv[1]))
pipe = pipeline("automatic-speech-recognition", model=spec["model"], trust_remote_code=True)
files, long = spec["files"], {"raw": np.load(spec["long"]), "sampling_rate": 16000}
out = {"clips": [pipe(f, return_timestamps="word") for f in files],
       "batched": pipe(files, batch_size=2, return_timestamps="word"),
       "long_words": pipe(long, return_timestamps="word"), "long_chunks": pipe(long, return_timestamps=True)}
pipe.model.config.aligner = pipe.model.config.aligner_subfolder = ""  # as exported without --aligner
try:
    pipe(files[0], return_timestamps="word")
except ValueError as e:
    out["error"] = str(e)
out["call_time"] = pipe(files[0], return_timestamps="word", aligner=spec["aligner"])
pipe.model.config.aligner = spec["aligner"]  # as exported with a Hub id: loaded by name, not from the export
out["by_name"] = pipe(files[0], return_timestamps="word")
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def clips(asr_run, tmp_path_factory) -> dict:
    """The corpus's test clips as files, and a > 60-s input made of them with pauses between."""
    import pyarrow.parquet as pq

    from tatk.data.audio import decode

    root = tmp_path_factory.mktemp("word-clips")
    files = []
    for f in sorted(asr_run["corpus"].rglob("*test*.parquet")):
        for row in pq.read_table(f, columns=["wav"]).to_pylist():
            files.append(root / row["wav"]["path"])
            files[-1].write_bytes(row["wav"]["bytes"])
    pause = np.zeros(SR // 2, dtype=np.float32)
    pieces = [p for f in files for p in (decode(f), pause)]
    long = np.concatenate(pieces * (1 + int(60 * SR // sum(map(len, pieces)))))
    np.save(root / "long.npy", long)
    return {"files": files[:3], "long": root / "long.npy"}


@pytest.fixture(scope="module")
def ctc_folder(tmp_path_factory) -> Path:
    """An untrained tiny CTC model: the plumbing tests need its shapes, not its accuracy."""
    from tatk.synthetic.aligner import build_tiny_aligner

    return build_tiny_aligner(tmp_path_factory.mktemp("ctc") / "ctc", steps=0)


@pytest.fixture(scope="module")
def results(asr_run, ctc_folder, clips, tmp_path_factory) -> dict:
    """Export with a local --aligner (a copy, deleted afterwards), move the export, then run JOBS elsewhere."""
    root = tmp_path_factory.mktemp("word-export")
    shutil.copytree(ctc_folder, root / "ctc-copy")
    run_tatk("export", asr_run["checkpoint"], root / "made", "--aligner", root / "ctc-copy")
    shutil.rmtree(root / "ctc-copy")
    moved = shutil.move(root / "made", root / "elsewhere" / "asr")
    (root / "jobs.py").write_text(JOBS)
    spec = {"model": str(moved), "files": [str(f) for f in clips["files"]], "long": str(clips["long"]),
            "aligner": str(ctc_folder)}
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "cwd").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(root / "modules")}
    proc = subprocess.run([sys.executable, str(root / "jobs.py"), str(root / "spec.json"), str(root / "out.json")],
                          cwd=root / "cwd", capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"export": Path(moved), **json.loads((root / "out.json").read_text())}


def _check_words(result: dict, duration: float) -> None:
    words = result["chunks"]
    assert [w["text"] for w in words] == result["text"].split()
    starts = [w["timestamp"][0] for w in words]
    assert starts == sorted(starts)
    assert all(0 <= a <= b <= duration + 1e-3 for a, b in (w["timestamp"] for w in words))


def test_export_holds_the_aligner(results):
    config = json.loads((results["export"] / "config.json").read_text())
    assert config["aligner_subfolder"] == "aligner" and config["aligner_revision"].startswith("sha256:")
    assert config["aligner"] == "ctc-copy"  # the copied folder's name, not its path on this machine
    built_in = str(results["export"].parent.parent)  # the folder the export and the aligner's copy were made in
    texts = [f for f in results["export"].rglob("*") if f.suffix in (".json", ".md", ".txt")]
    assert any(f.parent.name == "aligner" for f in texts) and not [f for f in texts if built_in in f.read_text()]
    assert (results["export"] / "aligner" / "model.safetensors").is_file()
    assert not list((results["export"] / "aligner").glob("*.bin"))
    card = (results["export"] / "README.md").read_text()
    assert 'return_timestamps="word")["chunks"]  # words' in card and "`aligner/`" in card


def test_word_timestamps_per_clip_and_batched(results, clips):
    import soundfile

    assert any(r["chunks"] for r in results["clips"]), "no words at all: the check would be vacuous"
    for r, f in zip(results["clips"], clips["files"]):
        _check_words(r, soundfile.info(str(f)).duration)
    assert results["batched"] == results["clips"]


def test_long_audio_words_are_offset_into_their_chunks(results, clips, ctc_folder):
    """Each > 30-s chunk is aligned on its own and its words shifted by the chunk's start: recomputed here
    with the aligner on the chunk's samples, and every word lies inside its chunk."""
    from tatk.model.align import CtcAligner

    long = np.load(clips["long"])
    _check_words(results["long_words"], len(long) / SR)
    chunks = results["long_chunks"]["chunks"]
    assert len(chunks) >= 3
    aligner, expected = CtcAligner.load(str(ctc_folder)), []
    for c in chunks:
        start, end = c["timestamp"]
        words = aligner.words(long[round(start * SR): round(end * SR)], c["text"], offset=start)
        assert all(start - 1e-3 <= w["timestamp"][0] <= w["timestamp"][1] <= end + 1e-3 for w in words)
        expected += words
    got = results["long_words"]["chunks"]
    assert [w["text"] for w in got] == [w["text"] for w in expected]
    assert np.allclose([w["timestamp"] for w in got], [w["timestamp"] for w in expected], atol=2e-3)


def test_without_an_aligner_one_clear_error_and_other_aligners(results):
    assert "--aligner" in results["error"] and "\n" not in results["error"]
    assert results["call_time"] == results["clips"][0]  # the original folder = the copy inside the export
    assert results["by_name"] == results["clips"][0]


def test_export_refuses_a_bad_aligner_in_one_line(asr_run, tmp_path):
    for bad, why in ((tmp_path / "missing", "cannot load"), (asr_run["llm"], "no CTC head")):
        proc = run_tatk("export", asr_run["checkpoint"], tmp_path / "out", "--aligner", bad, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --aligner") and why in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()
