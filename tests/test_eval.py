"""`tatk eval` and tatk/wer.py: normalised corpus WER checked by hand and against an independent
Levenshtein, and shard-mode evaluation of the session's tiny trained recognizer."""

from __future__ import annotations

import io
import json
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import run_tatk

from tatk.errors import UserError
from tatk.wer import normalize, score

# -- tatk/wer.py -----------------------------------------------------------------------------------


def test_normaliser_makes_spelling_numbers_case_and_punctuation_agree():
    assert normalize("Mr. Smith's colour") == normalize("mister smith's color")
    assert normalize("twenty five") == normalize("25") == "25"
    assert normalize("Hello,   World!") == "hello world"
    s = score(["Mr. Smith's colour", "He paid twenty five dollars.", "Hello, World!"],
              ["mister smith's color", "he paid 25 dollars", "hello world"])
    assert (s.wer, s.sub, s.dels, s.ins, s.n) == (0.0, 0, 0, 0, 3)


def test_corpus_wer_is_total_errors_over_total_words_with_hand_counted_parts():
    # utt 1: "sat"→"sit" (1 sub), second "the" dropped (1 del), 6 words; utt 2: "my friend" added (2 ins), 2 words
    s = score(["the cat sat on the mat", "hello there"], ["the cat sit on mat", "hello there my friend"])
    assert (s.sub, s.dels, s.ins, s.ref_words) == (1, 1, 2, 8)
    assert s.wer == pytest.approx(4 / 8)  # the mean of per-utterance WERs would be (2/6 + 2/2) / 2 = 0.667
    assert [(u.ref_words, u.sub, u.dels, u.ins, u.errors) for u in s.utterances] == [(6, 1, 1, 0, 2), (2, 0, 0, 2, 2)]


def test_empty_normalised_reference_is_skipped_and_counted():
    s = score(["Uh.", "yes please", ""], ["oh", "yes", "something"])  # "uh" is a filler the normaliser removes
    assert s.empty_references == 2 and s.n == 1
    assert s.utterances[0] is None and s.utterances[2] is None
    assert (s.dels, s.ref_words, s.wer) == (1, 2, 0.5)
    nan = score([""], ["x"])
    assert nan.n == 0 and nan.wer != nan.wer


def _levenshtein(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_wer_agrees_with_an_independent_levenshtein_on_random_word_lists():
    rng = random.Random(0)
    vocab = "apple boat candle dog egg fish goat hat ink jam kite lamp".split()  # words the normaliser keeps
    refs, hyps = [], []
    for _ in range(200):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 12))]
        hyp = [w for w in ref if rng.random() > 0.2]  # deletions
        hyp = [rng.choice(vocab) if rng.random() < 0.2 else w for w in hyp]  # substitutions
        for _ in range(rng.randint(0, 2)):  # insertions
            hyp.insert(rng.randint(0, len(hyp)), rng.choice(vocab))
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    s = score(refs, hyps)
    distances = [_levenshtein(r.split(), h.split()) for r, h in zip(refs, hyps)]
    assert [u.errors for u in s.utterances] == distances
    assert s.wer == pytest.approx(sum(distances) / sum(len(r.split()) for r in refs))
    for r, h, u in zip(refs, hyps, s.utterances):  # the parts fit both word counts
        hits = u.ref_words - u.sub - u.dels
        assert u.ref_words == len(r.split()) and hits + u.sub + u.ins == len(h.split())


def test_cer_is_total_character_edits_over_reference_characters():
    # hand-counted: "cat"→"cut" 1 sub of 11 chars ("the cat sat"); "hi"→"" 2 deletions of 2 chars
    s = score(["The cat sat.", "Hi"], ["the cut sat", ""])
    assert [(u.char_errors, u.ref_chars) for u in s.utterances] == [(1, 11), (2, 2)]
    assert (s.char_errors, s.ref_chars) == (3, 13) and s.cer == pytest.approx(3 / 13)
    # and against an independent Levenshtein over characters, on random sentences
    rng = random.Random(1)
    vocab = ["alpha", "beta", "gamma", "delta", "echo", "kilo", "lima", "oscar"]
    refs = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8))) for _ in range(100)]
    hyps = [" ".join(w if rng.random() > 0.3 else rng.choice(vocab) for w in r.split() if rng.random() > 0.1) for r in refs]
    s = score(refs, hyps)
    distances = [_levenshtein(list(normalize(r)), list(normalize(h))) for r, h in zip(refs, hyps)]
    assert [u.char_errors for u in s.utterances] == distances
    assert s.cer == pytest.approx(sum(distances) / sum(len(normalize(r)) for r in refs))


# -- tatk eval, shard mode -------------------------------------------------------------------------


def _shard_features(shards, split="test"):
    """[(id, text, feats (T, D) float32)] of a shard split in manifest order, read with plain webdataset."""
    import webdataset as wds

    from tatk.shard.format import shard_paths

    out = []
    for raw in wds.WebDataset(shard_paths(shards, split), shardshuffle=False):
        meta = json.loads(raw["json"])
        out.append((meta["id"], raw["txt"].decode(), np.load(io.BytesIO(raw["feats.npy"])).astype(np.float32)))
    return out


@pytest.fixture(scope="module")
def shard_eval(asr_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "batched"
    proc = run_tatk("eval", asr_run["run"], "--data", asr_run["shards"], "--split", "test", "--batch-size", "3", "--out", out)
    return out, proc


def test_shard_eval_writes_consistent_files_and_the_models_own_transcripts(asr_run, shard_eval):
    from tatk.train.checkpoint import load_trained

    out, proc = shard_eval
    rows = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert "WER" in proc.stdout and "RTFx" in proc.stdout
    # every utterance of the split, most errors first, each row's counts adding up
    feats = _shard_features(asr_run["shards"])
    assert sorted(r["id"] for r in rows) == sorted(i for i, _, _ in feats)
    assert [r["errors"] for r in rows] == sorted((r["errors"] for r in rows), reverse=True)
    for r in rows:
        assert r["errors"] == r["sub"] + r["del"] + r["ins"] and r["ref_words"] == len(r["norm_reference"].split())
        assert r["norm_reference"] == normalize(r["reference"]) and r["norm_hypothesis"] == normalize(r["hypothesis"])
    # the summary is what the rows add up to
    assert summary["n"] == len(rows) and summary["skipped"] == {}
    for key in ("sub", "del", "ins", "ref_words"):
        assert summary[key] == sum(r[key] for r in rows)
    assert summary["wer"] == pytest.approx(sum(r["errors"] for r in rows) / sum(r["ref_words"] for r in rows))
    assert summary["audio_hours"] == pytest.approx(sum(r["duration"] for r in rows) / 3600, rel=1e-4)
    assert summary["rtfx"] == pytest.approx(summary["audio_hours"] * 3600 / summary["wall_s"])
    assert summary["step"] == 6 and summary["mode"] == "shards" and summary["batch_size"] == 3
    assert summary["model"] == str(asr_run["checkpoint"])
    # hypotheses are the checkpoint's own greedy transcripts, one utterance at a time (batching changes nothing)
    _, model = load_trained(asr_run["checkpoint"])
    got = {r["id"]: (r["reference"], r["hypothesis"]) for r in rows}
    for uid, text, f in feats:
        direct = model.generate(torch.from_numpy(f)[None], torch.tensor([f.shape[0]]), 128)[0]
        assert got[uid] == (text, direct)


def test_repeated_split_is_a_test_set_per_split_each_as_evaluated_alone(asr_run, shard_eval, tmp_path):
    """--split test --split train: one test set per split, each in eval-<data name>-<split> under --out, with the
    rows and WER of that split evaluated alone, and one table row each."""
    proc = run_tatk("eval", asr_run["run"], "--data", asr_run["shards"], "--split", "test", "--split", "train",
                    "--batch-size", "3", "--out", tmp_path)
    folders = {split: tmp_path / f"eval-{asr_run['shards'].name}-{split}" for split in ("test", "train")}
    alone = shard_eval[0]
    assert (folders["test"] / "utterances.jsonl").read_text() == (alone / "utterances.jsonl").read_text()
    test, train = (json.loads((folders[s] / "summary.json").read_text()) for s in ("test", "train"))
    assert test["wer"] == json.loads((alone / "summary.json").read_text())["wer"] and test["split"] == "test"
    rows = [json.loads(line) for line in (folders["train"] / "utterances.jsonl").read_text().splitlines()]
    assert train["split"] == "train" and train["n"] == len(rows)
    assert sorted(r["id"] for r in rows) == sorted(i for i, _, _ in _shard_features(asr_run["shards"], "train"))
    assert "[test]" in proc.stdout and "[train]" in proc.stdout


def test_num_beams_gives_the_models_own_beam_transcripts(asr_run, tmp_path):
    """--num-beams N: shard mode and audio mode both decode with N beams, as the model does one clip at a time."""
    from tatk.evaluate.run import EvalOptions, run_eval
    from tatk.train.checkpoint import load_trained

    run_tatk("eval", asr_run["run"], "--data", asr_run["shards"], "--num-beams", "3", "--batch-size", "3", "--out", tmp_path / "s")
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    rows = {r["id"]: r["hypothesis"] for r in map(json.loads, (tmp_path / "s" / "utterances.jsonl").read_text().splitlines())}
    assert summary["num_beams"] == 3
    _, model = load_trained(asr_run["checkpoint"])
    feats = _shard_features(asr_run["shards"])
    beam = {uid: model.generate(torch.from_numpy(f)[None], torch.tensor([f.shape[0]]), 128, num_beams=3)[0] for uid, _, f in feats}
    greedy = {uid: model.generate(torch.from_numpy(f)[None], torch.tensor([f.shape[0]]), 128)[0] for uid, _, f in feats}
    assert rows == beam and beam != greedy, "beam equals greedy on every clip: the check would be vacuous"
    audio = run_eval(EvalOptions(model=str(asr_run["run"]), dataset=str(asr_run["corpus"]), subset="small",
                                 split="test", num_beams=3, out=tmp_path / "a"))
    audio_rows = {r["id"]: r["hypothesis"] for r in map(json.loads, (tmp_path / "a" / "utterances.jsonl").read_text().splitlines())}
    assert audio["num_beams"] == 3 and audio_rows == beam


def test_max_samples_takes_the_first_utterances_in_order(asr_run, tmp_path):
    from tatk.evaluate.run import EvalOptions, run_eval

    summary = run_eval(EvalOptions(model=str(asr_run["checkpoint"]), data=asr_run["shards"], max_samples=2,
                                   batch_size=2, out=tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "utterances.jsonl").read_text().splitlines()]
    assert summary["n"] == 2
    assert sorted(r["id"] for r in rows) == sorted(i for i, _, _ in _shard_features(asr_run["shards"])[:2])


def test_default_output_folder_is_next_to_the_checkpoint(asr_run, tmp_path):
    from tatk.evaluate.run import EvalOptions, run_eval

    ckpt = tmp_path / "step-000006"
    shutil.copytree(asr_run["checkpoint"], ckpt)
    run_eval(EvalOptions(model=str(ckpt), data=asr_run["shards"], max_samples=1))
    assert (ckpt / f"eval-{asr_run['shards'].name}-test" / "summary.json").is_file()


def test_bad_inputs_fail_with_one_line(asr_run, tmp_path):
    from tatk.evaluate.run import EvalOptions, run_eval

    broken = tmp_path / "step-000006"
    shutil.copytree(asr_run["checkpoint"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    proc = run_tatk("eval", broken, "--data", asr_run["shards"], check=False)
    assert proc.returncode == 2 and "cannot read weights" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

    def fails(match, **kw):
        with pytest.raises(UserError, match=match) as e:
            run_eval(EvalOptions(**{"model": str(asr_run["checkpoint"]), "data": asr_run["shards"], **kw}))
        assert "\n" not in str(e.value)

    fails("no such checkpoint", model=str(tmp_path / "nowhere"))
    fails("no such shard folder", data=tmp_path / "no-shards")
    fails("no split 'dev'", split="dev")
    fails("no split 'dev'", split=["test", "dev"])  # every split is checked before any model loads
    fails("both write eval-", split=["test", "test"])
    fails("cannot be opened", dataset="nobody/no-such-dataset")  # a second test set, checked before any model loads
    fails("needs a tatk checkpoint", model="org/some-model")
    fails("no such folder", data=None, local=tmp_path / "no-corpus")
    fails("cannot be opened", data=None, dataset="nobody/no-such-dataset")
    other = tmp_path / "other-shards"
    shutil.copytree(asr_run["shards"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["encoder"]["dim"] = 32
    (other / "manifest.json").write_text(json.dumps(manifest))
    fails("32-dim", data=other)
    del manifest["format_version"]  # format 1 (before units of work) wrote none
    (other / "manifest.json").write_text(json.dumps(manifest))
    fails("shards in format 1", data=other)


# -- tatk eval, audio mode (end to end through tatk.export.load_pipeline) -------------------------------


def test_audio_eval_matches_the_pipeline_and_shard_mode(asr_run, shard_eval, tmp_path):
    from tatk.data.audio import decode
    from tatk.data.corpus import Corpus, CorpusSpec
    from tatk.evaluate.run import EvalOptions, run_eval
    from tatk.export import load_pipeline

    summary = run_eval(EvalOptions(model=str(asr_run["run"]), dataset=str(asr_run["corpus"]), subset="small",
                                   split="test", batch_size=3, out=tmp_path))
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "utterances.jsonl").read_text().splitlines())}
    assert summary["mode"] == "audio" and summary["step"] == 6 and summary["n"] == len(rows) == 4
    # the pipeline called directly, one clip at a time, gives the same transcripts
    pipe = load_pipeline(str(asr_run["checkpoint"]))
    for row in Corpus(CorpusSpec(dataset=str(asr_run["corpus"]), subset="small", split="test")).rows():
        assert rows[row.id]["reference"] == row.text
        assert rows[row.id]["hypothesis"] == pipe({"raw": decode(row.audio), "sampling_rate": 16000})["text"].strip()
    # and so does shard mode on the features `tatk shard` stored for the same clips
    shard_rows = {r["id"]: r for r in map(json.loads, (shard_eval[0] / "utterances.jsonl").read_text().splitlines())}
    assert {k: r["hypothesis"] for k, r in rows.items()} == {k: r["hypothesis"] for k, r in shard_rows.items()}
    assert summary["audio_hours"] == pytest.approx(sum(r["duration"] for r in rows.values()) / 3600, rel=1e-4)


def test_audio_eval_of_an_export_folder_matches_its_checkpoint(asr_run, shard_eval, tmp_path):
    """MODEL may be an export folder (what `tatk push` uploads): same transcripts as the checkpoint it came from."""
    from tatk.evaluate.run import EvalOptions, run_eval
    from tatk.export import export

    folder = export(asr_run["checkpoint"], tmp_path / "export")
    summary = run_eval(EvalOptions(model=str(folder), dataset=str(asr_run["corpus"]), subset="small", split="test",
                                   batch_size=2, out=tmp_path / "out"))
    rows = {r["id"]: r["hypothesis"] for r in map(json.loads, (tmp_path / "out" / "utterances.jsonl").read_text().splitlines())}
    shard_rows = {r["id"]: r["hypothesis"] for r in map(json.loads, (shard_eval[0] / "utterances.jsonl").read_text().splitlines())}
    assert summary["mode"] == "audio" and summary["step"] is None and rows == shard_rows


def test_audio_eval_skips_bad_rows_by_reason(asr_run, speech, tmp_path):
    from tatk.evaluate.run import EvalOptions, run_eval

    src, folder = speech["folder"] / "train", tmp_path / "corpus"
    folder.mkdir()
    lines = (src / "metadata.csv").read_text().splitlines()[1:4]
    for line in lines:
        shutil.copy(src / line.split(",")[0], folder)
    (folder / "bad.wav").write_bytes(b"RIFF-not-audio")
    first = lines[0].split(",")[0]
    (folder / "metadata.csv").write_text("\n".join(["file,text", *lines[:2], "bad.wav,some words", f"{first},", lines[2]]) + "\n")
    summary = run_eval(EvalOptions(model=str(asr_run["checkpoint"]), local=folder, split="train", max_samples=4,
                                   out=tmp_path / "out"))
    assert summary["skipped"] == {"unreadable": 1, "empty_text": 1} and summary["n"] == 2


# -- tatk eval --compare ---------------------------------------------------------------------------


def _fake_eval(folder, wer, sub, dels, ins, words, rtfx, errors: dict[str, int]):
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"wer": wer, "sub": sub, "del": dels, "ins": ins, "ref_words": words,
                                                     "n": len(errors), "audio_hours": 0.5, "rtfx": rtfx}))
    (folder / "utterances.jsonl").write_text("".join(json.dumps({"id": k, "errors": v}) + "\n" for k, v in errors.items()))


def test_compare_reports_deltas_and_utterances_that_got_better_or_worse(tmp_path):
    from tatk.evaluate.compare import compare

    _fake_eval(tmp_path / "a", 0.25, 10, 5, 5, 80, 40.0, {"u1": 3, "u2": 0, "u3": 2, "u4": 1})
    _fake_eval(tmp_path / "b", 0.125, 4, 3, 3, 80, 60.0, {"u1": 1, "u2": 0, "u3": 4, "u5": 0})
    result = compare(tmp_path / "a", tmp_path / "b" / "summary.json")
    assert result["wer"] == pytest.approx(-0.125) and (result["sub"], result["del"], result["ins"]) == (-6, -2, -2)
    assert result["rtfx"] == pytest.approx(20.0)
    assert (result["better"], result["worse"], result["same"], result["unmatched"]) == (1, 1, 1, 2)
    proc = run_tatk("eval", "--compare", tmp_path / "a", tmp_path / "b")
    assert "-12.50 pts" in proc.stdout and "1 better, 1 worse, 1 same" in proc.stdout
