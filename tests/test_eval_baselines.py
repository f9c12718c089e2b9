"""`tatk eval` beyond one tatk model and one test set: transformers ASR baselines (tiny random Whisper and
wav2vec2-CTC folders) on the same rows with the same scoring and files, `--compare` beside the tatk model,
several test sets in one run, CER, and `tatk shard`'s column options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_tatk


def _rows(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (folder / "utterances.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def baselines(tmp_path_factory) -> dict[str, Path]:
    from tatk.synthetic.recognizers import RECOGNIZER_KINDS, build_tiny_recognizer

    root = tmp_path_factory.mktemp("baselines")
    return {kind: build_tiny_recognizer(kind, root / kind) for kind in RECOGNIZER_KINDS}


@pytest.fixture(scope="module")
def tatk_eval(asr_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tatk-eval") / "tatk"
    run_tatk("eval", asr_run["run"], "--dataset", asr_run["corpus"], "--subset", "small", "--out", out)
    return out


# wav2vec2-CTC one clip at a time: in a batch, transformers' ASR pipeline also decodes the padding frames of the
# shorter clips (extra characters at the end; the logits of the real frames agree within 3e-7), so its batched
# transcripts differ from its own one-clip calls for a reason that is not tatk's
@pytest.mark.parametrize("kind, batch", [("whisper", 3), ("wav2vec2-ctc", 1)])
def test_a_transformers_baseline_is_scored_like_a_tatk_model(asr_run, baselines, tatk_eval, tmp_path, kind, batch):
    from transformers import pipeline

    from tatk.data.audio import decode
    from tatk.data.corpus import Corpus, CorpusSpec
    from tatk.wer import score

    out = tmp_path / kind
    proc = run_tatk("eval", baselines[kind], "--dataset", asr_run["corpus"], "--subset", "small", "--metric", "wer,cer",
                    "--batch-size", batch, "--out", out)
    assert "WER" in proc.stdout and "CER" in proc.stdout and "baseline" in proc.stdout
    summary, rows = json.loads((out / "summary.json").read_text()), _rows(out)
    assert summary["model_kind"] == "transformers" and summary["mode"] == "audio" and summary["n"] == len(rows) == 4
    assert summary["model_type"] == {"whisper": "whisper", "wav2vec2-ctc": "wav2vec2"}[kind]
    # the same rows and references as the tatk model's eval, and transformers' own pipeline's transcripts
    assert {k: r["reference"] for k, r in rows.items()} == {k: r["reference"] for k, r in _rows(tatk_eval).items()}
    pipe = pipeline("automatic-speech-recognition", model=str(baselines[kind]))
    for row in Corpus(CorpusSpec(dataset=str(asr_run["corpus"]), subset="small", split="test")).rows():
        assert rows[row.id]["hypothesis"] == pipe({"raw": decode(row.audio), "sampling_rate": 16000})["text"].strip()
    # scored as tatk/wer.py scores any pair of lists; CER is total character edits over reference characters
    s = score([r["reference"] for r in rows.values()], [r["hypothesis"] for r in rows.values()])
    assert summary["wer"] == pytest.approx(s.wer) and summary["cer"] == pytest.approx(s.cer)
    assert summary["cer"] == pytest.approx(sum(r["char_errors"] for r in rows.values()) / sum(r["ref_chars"] for r in rows.values()))
    assert summary["wer"] > 0.5  # random weights: near 100 %, as expected
    # --compare sets the baseline beside the tatk model
    cmp = run_tatk("eval", "--compare", tatk_eval, out)
    assert "(baseline)" in cmp.stdout and "CER" in cmp.stdout and "better" in cmp.stdout


def test_several_test_sets_one_row_each(asr_run, tmp_path):
    proc = run_tatk("eval", asr_run["run"], "--data", asr_run["shards"], "--dataset", asr_run["corpus"], "--subset", "small",
                    "--max-samples", "2", "--out", tmp_path)
    shards, audio = tmp_path / f"eval-{asr_run['shards'].name}-test", tmp_path / f"eval-{asr_run['corpus'].name}-small-test"
    s1, s2 = (json.loads((f / "summary.json").read_text()) for f in (shards, audio))
    assert (s1["mode"], s2["mode"]) == ("shards", "audio") and s1["n"] == s2["n"] == 2
    assert _rows(shards).keys() == _rows(audio).keys()
    table = [line for line in proc.stdout.splitlines() if "shards" in line or "audio" in line]
    assert sum("[test], shards" in line for line in table) == 1 and sum("[test], audio" in line for line in table) == 1
    # the same folder twice would overwrite itself: refused in one line, before anything runs
    bad = run_tatk("eval", asr_run["run"], "--data", asr_run["shards"], "--data", asr_run["shards"], check=False)
    assert bad.returncode == 2 and "different folder names" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_column_options_and_text_transform_as_in_tatk_shard(asr_run, tatk_eval, tmp_path):
    """A corpus in another schema (audio / sentence / key columns, upper-case text) evaluates with the column options."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(pq.read_table(f) for f in sorted(asr_run["corpus"].rglob("*test*.parquet")))
    other = tmp_path / "other-schema" / "data"
    other.mkdir(parents=True)
    renamed = pa.table({"key": table["ID"], "audio": table["wav"],
                        "sentence": pa.array([t.upper() for t in table["text"].to_pylist()])})
    pq.write_table(renamed, other / "test-00000-of-00001.parquet")
    bad = run_tatk("eval", asr_run["run"], "--dataset", other.parent, check=False)
    assert bad.returncode == 2 and "--audio-column 'wav'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    out = tmp_path / "out"
    run_tatk("eval", asr_run["run"], "--dataset", other.parent, "--audio-column", "audio", "--text-column", "sentence",
             "--id-column", "key", "--text-transform", "lower", "--out", out)
    rows, want = _rows(out), _rows(tatk_eval)
    assert {k: (r["reference"], r["hypothesis"]) for k, r in rows.items()} == {k: (r["reference"], r["hypothesis"]) for k, r in want.items()}
    assert json.loads((out / "summary.json").read_text())["columns"]["text"] == "sentence"
