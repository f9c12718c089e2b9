"""`tatk shard` at corpus scale: units of work, exactly once at any process / worker count, resume at any
shape, --verify, the skip-rate guard and listings as people write them (issue 10)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, run_tatk
from test_shard import read_shards

HOOK = '''import os, sys
def _log_opens(event, args):
    # Every parquet file any tatk process opens through Python, with the opening process and its parent.
    if event == "open" and isinstance(args[0], str) and args[0].endswith(".parquet"):
        fd = os.open(os.environ["TATK_OPEN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{os.getpid()} {os.getppid()} {args[0]}\\n".encode())
        os.close(fd)
sys.addaudithook(_log_opens)
'''


@pytest.fixture(scope="module")
def loquacious(tmp_path_factory) -> Path:
    """A LoquaciousSet-shaped repo with 8 parquet files of 5 rows in its train split."""
    from tatk.synthetic.sentences import make_splits
    from tatk.synthetic.speech import write_corpus

    root = tmp_path_factory.mktemp("loquacious")
    write_corpus(root, make_splits(40, 0, 8, seed=4), layout="parquet", seed=4, rows_per_shard=5)
    assert len(list((root / "small").glob("train-*.parquet"))) == 8
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here uses one torch thread: float sums, and so the stored fp16 features, depend on the thread
    count, and `accelerate launch` gives its processes one thread; the byte comparisons need one setting."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def _args(loquacious: Path, encoder, out: Path, *extra) -> list[str]:
    return ["shard", "--dataset", str(loquacious), "--subset", "small", "--encoder", str(encoder), "--out", str(out),
            "--batch-size", "1", "--shard-size-mb", "0.02", *map(str, extra)]


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tatk", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("train-*.tar"))}


@pytest.fixture(scope="module")
def reference(loquacious, tiny_encoders, tmp_path_factory) -> Path:
    """One process, one worker: the shards every other shape must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "out"
    run_tatk(*_args(loquacious, tiny_encoders["hubert"], out, "--workers", "1"))
    return out


def _source_rows(loquacious: Path) -> dict[str, int]:
    return {p.name: pq.read_metadata(p).num_rows for p in sorted((loquacious / "small").glob("train-*.parquet"))}


def test_reference_counts_every_source_row(reference, loquacious):
    manifest = json.loads((reference / "manifest.json").read_text())["splits"]["train"]
    rows = _source_rows(loquacious)
    assert [Path(u["source"]["path"]).name for u in manifest["units"]] == list(rows)
    assert [u["rows"] for u in manifest["units"]] == list(rows.values())
    assert manifest["rows"] == manifest["samples"] == sum(rows.values()) == len(read_shards(reference)) == 40
    assert all(t.startswith(f"train-{u['unit']}-") for u in manifest["units"] for t in u["tars"])


def test_two_processes_two_workers_match_one_by_one_and_open_each_file_once(reference, loquacious, tiny_encoders, tmp_path):
    """2 processes × 2 DataLoader workers on one folder (as 2 machines would): same keys, the same bytes
    per unit, and each source file opened by exactly one worker, once (seen from outside by an audit hook)."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "opens.log"
    env = {"TATK_OPEN_LOG": str(log), "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out"
    procs = [_start(_args(loquacious, tiny_encoders["hubert"], out, "--workers", "2"), env) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert _tars(out) == _tars(reference)
    assert sorted(read_shards(out)) == sorted(read_shards(reference))
    m1, m2 = (json.loads((d / "manifest.json").read_text())["splits"]["train"] for d in (reference, out))
    for key in ("rows", "samples", "skipped", "shards", "frames"):
        assert m1[key] == m2[key], key
    assert [(u["unit"], u["rows"], u["kept"], u["tars"]) for u in m1["units"]] == [(u["unit"], u["rows"], u["kept"], u["tars"]) for u in m2["units"]]

    opens = [line.split() for line in log.read_text().splitlines()]
    mains = {p.pid for p in procs}
    by_file: dict[str, list] = {}
    for pid, ppid, path in opens:
        by_file.setdefault(Path(path).name, []).append((int(pid), int(ppid)))
    assert sorted(by_file) == sorted(_source_rows(loquacious)), "every train file is read, and no other split's"
    for name, openers in by_file.items():
        assert len(openers) == 1, f"{name} opened {len(openers)} times: {openers}"
        assert openers[0][1] in mains and openers[0][0] not in mains, f"{name}: opened by a non-worker {openers}"
    records = [json.loads(p.read_text()) for p in (out / ".state" / "train" / "done").glob("*.json")]
    # Each unit once; the processes that did them are the two started (usually both take part, but a process
    # that starts late on a busy machine may find every unit claimed: by design, the faster one takes more).
    assert len(records) == 8 and {r["by"]["pid"] for r in records} <= {p.pid for p in procs}


@pytest.mark.slow
def test_accelerate_launch_two_processes_match_one_by_one(reference, loquacious, tiny_encoders, tmp_path):
    """The same under `accelerate launch` (2 CPU processes × 2 workers): no collective call, no wait, same bytes."""
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "tatk",
           *_args(loquacious, tiny_encoders["hubert"], tmp_path, "--workers", "2")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _tars(tmp_path) == _tars(reference)
    records = [json.loads(p.read_text()) for p in (tmp_path / ".state" / "train" / "done").glob("*.json")]
    assert len(records) == 8 and sum(r["rows"] for r in records) == 40  # each unit once, by either rank
    assert len({r["by"]["pid"] for r in records}) <= 2


def test_workers_2_keeps_every_row_of_a_parquet_corpus(loquacious, tmp_path):
    """The regression of issue 10: --workers 2 on parquet kept half the rows and reported no skips."""
    run_tatk("shard", "--dataset", loquacious, "--subset", "small", "--encoder", "mel", "--out", tmp_path, "--workers", "2")
    manifest = json.loads((tmp_path / "manifest.json").read_text())["splits"]["train"]
    assert manifest["samples"] == manifest["rows"] == 40 == len(read_shards(tmp_path)) and manifest["skipped"] == {}


def test_several_splits_in_one_command_match_one_command_each(reference, loquacious, tiny_encoders, tmp_path):
    """`--split test --split train`: each split's tars byte for byte as one command per split writes them, one
    manifest for both; a split the corpus lacks, even given last, fails in one line before any tar is written."""
    bad = run_tatk(*_args(loquacious, tiny_encoders["hubert"], tmp_path / "bad", "--split", "train", "--split", "nope"),
                   check=False)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "split 'nope'" in lines[0], bad.stderr
    assert not list((tmp_path / "bad").glob("*.tar"))
    out, alone = tmp_path / "out", tmp_path / "alone"
    run_tatk(*_args(loquacious, tiny_encoders["hubert"], out, "--split", "test", "--split", "train", "--workers", "2"))
    run_tatk(*_args(loquacious, tiny_encoders["hubert"], alone, "--split", "test"))
    assert _tars(out) == _tars(reference) | _tars(alone)
    splits = json.loads((out / "manifest.json").read_text())["splits"]
    assert {name: split["samples"] for name, split in splits.items()} == {"test": 8, "train": 40}


def test_one_command_loads_the_encoder_once_for_all_its_splits(loquacious, tiny_encoders, tmp_path, monkeypatch):
    """A real encoder takes seconds to minutes to load (GLM-ASR's comes out of the whole speech model): one
    command loads it once for all its splits, and not at all when every split is done. The loader is the real
    one, counted on its way through."""
    from tatk.data.corpus import CorpusSpec
    from tatk.shard import encoders
    from tatk.shard.run import ShardConfig, run_shards

    loads, load = [], encoders.load_audio_model
    monkeypatch.setattr(encoders, "load_audio_model", lambda name, *a, **k: loads.append(name) or load(name, *a, **k))
    encoder = str(tiny_encoders["hubert"])
    cfg = ShardConfig(out=tmp_path, corpus=CorpusSpec(dataset=str(loquacious), subset="small"), encoder=encoder,
                      batch_size=1, shard_size_mb=0.02, workers=0)
    run_shards(cfg, ["test", "train"])
    splits = json.loads((tmp_path / "manifest.json").read_text())["splits"]
    assert loads == [encoder] and {name: split["samples"] for name, split in splits.items()} == {"test": 8, "train": 40}
    run_shards(cfg, ["train", "test"])
    assert loads == [encoder]


def test_sigkill_two_processes_then_resume_with_one_process_three_workers(reference, loquacious, tiny_encoders, tmp_path):
    out = tmp_path / "out"
    args = _args(loquacious, tiny_encoders["hubert"], out, "--workers", "2")
    procs = [_start(args) for _ in range(2)]
    done = out / ".state" / "train" / "done"
    deadline = time.time() + 300
    while len(list(done.glob("*.json"))) < 2 and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.02)
    for p in procs:  # the process group: its DataLoader workers die with it
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finished = len(list(done.glob("*.json")))
    assert 2 <= finished < 8, "the kill should land mid-way"
    assert not (out / "manifest.json").exists()

    proc = run_tatk(*_args(loquacious, tiny_encoders["hubert"], out, "--workers", "3"))
    assert f"{finished} of 8 units done and kept" in proc.stderr
    assert _tars(out) == _tars(reference)  # nothing lost, nothing repeated, the same bytes
    assert not list(out.glob(".*tmp*"))
    assert len(read_shards(out)) == 40  # read_shards asserts there are no duplicate keys
    m1, m2 = (json.loads((d / "manifest.json").read_text())["splits"]["train"] for d in (reference, out))
    assert m1["shards"] == m2["shards"] and m1["samples"] == m2["samples"] == 40


def test_verify_passes_then_names_the_unit_with_a_gap(reference, tmp_path):
    from tatk.errors import UserError
    from tatk.shard.verify import verify

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    assert verify(out) == {"train": dict(units=8, rows=40, kept=40, skipped=0)}
    proc = run_tatk("shard", "--verify", out)
    assert "8 / 8" in proc.stdout + proc.stderr

    tar = out / "train-u00003-001.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 1  # same size, same tar structure, different bytes: only the sha256 can tell
    tar.write_bytes(bytes(data))
    with pytest.raises(UserError, match="unit u00003: train-u00003-001.tar does not match the sha256"):
        verify(out)
    tar.unlink()
    with pytest.raises(UserError, match="unit u00003: train-u00003-001.tar is missing"):
        verify(out)
    (out / ".state" / "train" / "done" / "u00005.json").unlink()
    proc = run_tatk("shard", "--verify", out, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "unit u00005 is not done" in lines[0], proc.stderr


def test_changing_a_feature_option_is_refused(reference, loquacious, tiny_encoders, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    proc = run_tatk(*_args(loquacious, tiny_encoders["hubert"], out, "--dtype", "float32"), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "dtype='float16', not 'float32'" in lines[0], proc.stderr


def test_skip_guard_stops_a_corpus_of_unsupported_audio(speech, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = ["file_name,transcription"]
    for i in range(30):  # a container libsndfile cannot read (an MP4 box header), as a corpus of .m4a would be
        (corpus / f"clip{i}.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + os.urandom(2000))
        lines.append(f"clip{i}.m4a,hello number {i}")
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n")
    proc = run_tatk("shard", "--local", corpus, "--encoder", "mel", "--out", tmp_path / "out", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "unreadable: 30 of 30 rows" in errors[0] and "first: clip0" in errors[0], errors[0]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_audiofolder_listing_with_a_malformed_row(speech, tmp_path):
    """HF audiofolder's `file_name` + `transcription`, no flags; row 500 has a stray field and is counted as bad_row."""
    src = sorted(p for p in (speech["folder"] / "train").iterdir() if p.suffix in (".wav", ".flac"))[:3]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for p in src:
        shutil.copy(p, corpus / p.name)
    rows = [[src[i % 3].name, f"utterance {i}"] for i in range(520)]
    with open(corpus / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "transcription"])
        for i, r in enumerate(rows, 1):
            w.writerow(r + ["stray"] if i == 500 else r)
    run_tatk("shard", "--local", corpus, "--encoder", "mel", "--out", tmp_path / "out", "--workers", "2")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["splits"]["train"]
    assert manifest["skipped"] == {"bad_row": 1} and manifest["rows"] == 520 and manifest["samples"] == 519
    texts = {s["txt"] for s in read_shards(tmp_path / "out").values()}
    assert texts == {f"utterance {i}" for i in range(520) if i != 499}


def test_listing_blocks_cover_every_row_once(tmp_path, monkeypatch):
    """Listing units (blocks of rows found by byte offset) read back exactly the rows csv/json read whole,
    quoted newlines and a broken JSON line included."""
    from tatk.data import listing

    monkeypatch.setattr(listing, "BLOCK_ROWS", 7)
    rows = [{"file": f"a{i}.wav", "text": f"line {i}" + ("\nwith a newline, and a comma" if i % 5 == 0 else "")} for i in range(30)]
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["file", "text"])
        w.writeheader()
        w.writerows(rows)
    units = listing.listing_units([tmp_path / "metadata.csv"])
    assert [u.rows for u in units] == [7, 7, 7, 7, 2] and [u.first for u in units] == [0, 7, 14, 21, 28]
    assert [r for u in units for r in listing.read_unit(u, [])] == rows

    lines = [json.dumps(r) for r in rows[:10]]
    lines[8] = '{"file": "broken'
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    got = [r for u in listing.listing_units([tmp_path / "x.jsonl"]) for r in listing.read_unit(u, [])]
    assert got[:8] == rows[:8] and got[9] == rows[9] and "_bad" in got[8]


def test_claims_are_taken_over_only_from_dead_or_silent_owners(tmp_path):
    from tatk.shard.units import STALE_SECONDS, UnitBook, owner

    book = UnitBook(tmp_path, "train")
    book.agree({}, [])
    me = owner()
    first = book.claim("u00000", me)
    assert first is not None and book.claim("u00000", me) is None  # held by a live process (this one)

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    first.write_text(json.dumps(me | {"pid": int(dead.stdout)}))  # same host, process gone
    second = book.claim("u00000", me)
    assert second is not None and second.name == "u00000.1"

    second.write_text(json.dumps({"host": "another-machine", "pid": 1}))  # cannot be checked from here: heartbeat decides
    assert book.claim("u00000", me) is None
    old = time.time() - STALE_SECONDS - 5
    os.utime(second, (old, old))
    third = book.claim("u00000", me)
    assert third is not None and third.name == "u00000.2"

    book.write_done({"unit": "u00001", "rows": 0})
    assert book.claim("u00001", me) is None  # done units are never claimed
