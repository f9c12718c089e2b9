"""The main job (`bash tools/demo.sh`) at a CI-sized setting, plus the pieces it is made of: SpecAugment
masks and token swaps, the character and whole-word tokenizers, `tatk report`, and run-to-run determinism of training and eval."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_tatk

from tatk.train.augment import augment_batch, mask_features, masks, swap_tokens

# CI size: ~2 minutes on 2 quiet cores. Smaller batches and one validation at the end keep steps cheap; the
# recipe's 60 warm-up steps would leave 24 steps at a fraction of the learning rate.
SIZES = {"DEMO_TRAIN": "160", "DEMO_DEV": "8", "DEMO_TEST": "12", "DEMO_STEPS": "24",
         "DEMO_SET": "data.max_tokens=1024 optim.warmup_steps=4 train.log_every=4 train.eval_every=0 eval.wer_samples=8 "
                     "eval.max_new_tokens=64"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """`bash tools/demo.sh` run once, small, into a temporary folder (not the user's runs/demo)."""
    root = tmp_path_factory.mktemp("demo")
    env = {**os.environ, **SIZES, "DEMO_DIR": str(root / "demo"), "DEMO_SHARDS": str(root / "shards"),
           "OMP_NUM_THREADS": "2", "WANDB_MODE": "disabled"}
    done = subprocess.run(["bash", "tools/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return {"dir": root / "demo", "shards": root / "shards", "run": root / "demo" / "asr", "stdout": done.stdout}


def evals(demo: dict[str, Path], split: str) -> Path:
    """The demo's `tatk eval` folder of a test split (all three written by one command: eval-<shards name>-<split>)."""
    return demo["run"] / f"eval-{demo['shards'].name}-{split}"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_demo_every_stage_leaves_valid_artifacts(demo):
    import matplotlib.image
    import pyarrow.parquet as pq
    from safetensors import safe_open

    # corpus: LoquaciousSet-shaped parquet, the requested sizes, test sentences never in train
    corpus = demo["dir"] / "corpus"
    texts = {s: [t for f in sorted(corpus.glob(f"*/{s}-*.parquet")) for t in pq.read_table(f)["text"].to_pylist()]
             for s in ("train", "dev", "test")}
    assert {s: len(t) for s, t in texts.items()} == {"train": 160, "dev": 8, "test": 12}
    assert not set(texts["test"]) & set(texts["train"])
    # shards: every split, every utterance
    manifest = json.loads((demo["shards"] / "manifest.json").read_text())
    assert {s: manifest["splits"][s]["samples"] for s in ("train", "dev", "test")} == {"train": 160, "dev": 8, "test": 12}
    # training: the whole decoder and the projector were trained and saved; the loss fell
    ckpt = demo["run"] / "checkpoints" / "step-000024"
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert any(k.startswith("projector.") for k in keys)
    assert "llm.model.embed_tokens.weight" in keys and "llm.lm_head.weight" in keys
    losses = [r["loss"] for r in metrics(demo["run"]) if "loss" in r]
    assert len(losses) >= 2 and losses[-1] < 0.8 * losses[0], losses
    assert any("wer" in r for r in metrics(demo["run"]))  # validation ran on the dev split
    # eval on the held-out test split
    summary = json.loads((evals(demo, "test") / "summary.json").read_text())
    assert summary["n"] == 12 and summary["split"] == "test" and 0 <= summary["wer"] < 10
    rows = (evals(demo, "test") / "utterances.jsonl").read_text().splitlines()
    assert len(rows) == 12
    # report: a readable PNG of the size plotted, the eval summary, worst and best utterances
    report = demo["run"] / "report"
    image = matplotlib.image.imread(report / "training.png")
    assert image.shape[:2] == (400, 1000) and image.std() > 0
    assert json.loads((report / "eval-summary.json").read_text()) == summary
    text = (report / "report.md").read_text()
    assert "10 worst utterances" in text and "10 best utterances" in text and f"{100 * summary['wer']:.2f} %" in text
    worst = json.loads(rows[0])  # eval lists most errors first
    assert worst["reference"] in text
    assert "total" in (report / "timings.txt").read_text()
    assert str(report / "report.md") in demo["stdout"]


@pytest.mark.slow
def test_demo_sets_held_out_splits_side_by_side(demo):
    """The main job evaluates the in-grammar test split, unseen word orders and unseen voices with noise;
    the report's table holds each eval's own WER and size, and the bar chart is drawn."""
    import matplotlib.image

    report = demo["run"] / "report"
    text = (report / "report.md").read_text()
    table = text[text.index("## Held-out splits side by side"):]
    first = None
    for split in ("test", "test_order", "test_noisy"):
        summary = json.loads((evals(demo, split) / "summary.json").read_text())
        assert summary["split"] == split and summary["n"] == 12
        first = summary["wer"] if first is None else first
        assert f"| {split} | {summary['data']} | 12 | {100 * summary['wer']:.2f} % | {100 * (summary['wer'] - first):+.2f} |" in table
    assert json.loads((report / "eval-summaries.json").read_text())["test_noisy"]["split"] == "test_noisy"
    assert matplotlib.image.imread(report / "held-out.png").std() > 0


@pytest.mark.slow
def test_demo_export_transcribes_a_test_clip(demo):
    import pyarrow.parquet as pq
    from transformers import pipeline

    from tatk.data.audio import decode

    export = demo["dir"] / "export"
    assert (export / "config.json").is_file()
    # the model card states the in-grammar test split's WER (tools/demo.sh passes that eval to tatk export)
    test = json.loads((evals(demo, "test") / "summary.json").read_text())
    assert f"| test | 12 | {test['audio_hours']:.3f} | {100 * test['wer']:.2f} % |" in (export / "README.md").read_text()
    table = pq.read_table(min((demo["dir"] / "corpus" / "test").glob("*.parquet")))
    wave = decode(table["wav"][0].as_py()["bytes"])
    asr = pipeline("automatic-speech-recognition", model=str(export), trust_remote_code=True, device="cpu")
    out = asr({"raw": wave, "sampling_rate": 16000})
    assert isinstance(out["text"], str) and out["text"].strip()  # 24 steps: words, if not yet the right ones


@pytest.mark.slow
def test_report_regenerates_identically_from_the_run(demo, tmp_path):
    report = demo["run"] / "report"
    before = (report / "report.md").read_text()
    (report / "report.md").unlink()
    run_tatk("report", demo["run"])  # --eval defaults to the newest eval folder inside the run
    assert (report / "report.md").read_text() == before
    bad = run_tatk("report", tmp_path, check=False)
    assert bad.returncode == 2 and "metrics.jsonl" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_same_seed_same_losses_and_transcripts(demo, tmp_path):
    """Two trainings of the demo recipe (masks included) on the same shards: identical losses, identical
    checkpoints' transcripts of the test split."""
    outs = []
    for name in ("a", "b"):
        run_tatk("train", REPO / "recipes" / "demo.toml", "--set", f"run.out_dir={tmp_path}", "--set", f"run.name={name}",
                 "--set", f"features.encoder={demo['dir'] / 'encoder'}", "--set", f"model.llm={demo['dir'] / 'llm'}",
                 "--set", f"data.train.0.path={demo['shards']}", "--set", f"data.val.path={demo['shards']}",
                 "--set", "train.steps=6", "--set", "train.log_every=1", "--set", "eval.wer_samples=4",
                 "--set", "eval.max_new_tokens=32",
                 env={"OMP_NUM_THREADS": "2"})
        run_tatk("eval", tmp_path / name, "--data", demo["shards"], "--split", "test", "--max-samples", "6",
                 "--out", tmp_path / f"eval-{name}")
        hyps = {json.loads(r)["id"]: json.loads(r)["hypothesis"]
                for r in (tmp_path / f"eval-{name}" / "utterances.jsonl").read_text().splitlines()}
        outs.append(([r["loss"] for r in metrics(tmp_path / name) if "loss" in r], hyps))
    assert len(outs[0][0]) == 6 and outs[0][0] == outs[1][0]
    assert len(outs[0][1]) == 6 and outs[0][1] == outs[1][1]


# --- SpecAugment masks and token swaps (tatk/train/augment.py)


@dataclass
class Masks:
    time_masks: int = 2
    time_width: int = 10
    freq_masks: int = 2
    freq_width: int = 8


def test_masks_fill_bands_with_the_clip_mean_and_are_seeded():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(200, 64)).astype(np.float16)
    a = mask_features(x, Masks(), np.random.default_rng(7))
    assert np.array_equal(a, mask_features(x, Masks(), np.random.default_rng(7)))  # same seed, same masks
    assert not np.array_equal(a, mask_features(x, Masks(), np.random.default_rng(8)))
    assert a.dtype == x.dtype and a.shape == x.shape and x.std() > 0  # input untouched, copy returned
    changed = a != x
    mean = x.astype(np.float32).mean(0).astype(np.float16)
    assert np.array_equal(a[changed], np.broadcast_to(mean, x.shape)[changed])  # every change is the clip mean
    rows, cols = changed.all(1), changed.all(0)  # fully masked frames / dimensions
    assert rows.sum() <= 2 * 10 and cols.sum() <= 2 * 8 and (rows.any() or cols.any())
    assert np.array_equal(mask_features(x, Masks(0, 10, 0, 8), np.random.default_rng(7)), x)
    assert not masks(Masks(0, 10, 0, 8)) and masks(Masks(1, 10, 0, 0))
    short = np.ones((8, 4), np.float16) * np.arange(8, dtype=np.float16)[:, None]
    masked = mask_features(short, Masks(3, 50, 0, 0), np.random.default_rng(1))
    assert (masked != short).any(1).sum() <= 3 * (8 // 5)  # a time mask spans at most a fifth of the clip


def test_masked_training_batches_replay_identically_when_resumed(tmp_path):
    """Batch i of a stream started at position (round 0, index i) equals batch i of a stream from the start."""
    import torch
    from train_fixtures import prepare_tiny, tiny_recipe

    from tatk.train.position import DataPosition
    from tatk.train.stream import TrainStream, shard_sets
    from tatk.train.speechlm import build_model
    from tatk.train.recipe import load_recipe

    base = prepare_tiny(tmp_path)
    path = tmp_path / "r.toml"
    path.write_text(tiny_recipe(base, tmp_path / "run", augment={"time_masks": 2, "time_width": 4, "freq_masks": 1,
                                                                  "freq_width": 4, "token_swap": 0.3}))
    recipe = load_recipe(path, [])
    from tatk.train.collate import Codec

    model = build_model(recipe, None, torch.float32)
    codec = Codec(model.tokenizer, model.layout, model.projector.output_length)
    def stream(at=None):  # a stream that goes on after the batch named ``at`` (a batch's "position")
        position = DataPosition(0, 1, 0, recipe.run.seed, [c for _, c, _ in shard_sets(recipe)])
        if at is not None:
            position.advance(at)
        return iter(TrainStream(recipe, codec, position))

    first = [next(b) for b in [stream()] for _ in range(4)]
    resumed = next(stream(first[2]["position"]))
    assert resumed["position"][:3] == first[3]["position"][:3] == (0, 0, 3)
    assert torch.equal(resumed["feats"], first[3]["feats"]) and resumed["keys"] == first[3]["keys"]
    assert torch.equal(resumed["input_ids"], first[3]["input_ids"])
    recipe.augment.time_masks = recipe.augment.freq_masks = 0
    recipe.augment.token_swap = 0.0
    plain = [next(b) for b in [stream()] for _ in range(4)]
    assert [b["keys"] for b in plain] == [b["keys"] for b in first]  # augmenting does not change the data order
    assert any(not torch.equal(p["feats"], f["feats"]) for p, f in zip(plain, first))
    assert any(not torch.equal(p["input_ids"], f["input_ids"]) for p, f in zip(plain, first))
    assert all(torch.equal(p["labels"], f["labels"]) for p, f in zip(plain, first))
    assert augment_batch([], recipe.augment, np.random.default_rng(0)) == []


def test_token_swaps_touch_only_the_transcript_history_and_are_seeded():
    import torch

    from tatk.model.speech import IGNORE

    # 64 rows: prompt 3 + audio 4 + transcript 20 tokens (ids 100..119 plus the row number) + end 7, then padding.
    ids, labels = torch.zeros(64, 40, dtype=torch.long), torch.full((64, 40), IGNORE)
    for b in range(64):
        text = torch.arange(100, 120) + 1000 * b
        ids[b, :3], ids[b, 3:7], ids[b, 7:27], ids[b, 27] = torch.tensor([1, 2, 3]), 5, text, 7
        labels[b, 7:27], labels[b, 27] = text, 7
    batch = {"input_ids": ids, "labels": labels, "keys": ["k"] * 64}
    out = swap_tokens(batch, 0.25, np.random.default_rng(3))
    changed = out["input_ids"] != ids
    assert out["labels"] is labels and torch.equal(ids, batch["input_ids"]) and out["keys"] == batch["keys"]
    assert not changed[:, :7].any() and not changed[:, 27:].any()  # prompt, audio, end token and padding kept
    # Each of the 1,280 history tokens is swapped with p = 0.25 for one of the batch's (1/1,280: itself).
    assert 0.20 < changed.float().sum() / (64 * 20) < 0.30
    assert set(out["input_ids"][changed].tolist()) <= set(labels[:, 7:27].flatten().tolist())
    assert torch.equal(out["input_ids"], swap_tokens(batch, 0.25, np.random.default_rng(3))["input_ids"])
    assert torch.equal(swap_tokens(batch, 0.0, np.random.default_rng(3))["input_ids"], ids)


def test_char_tokenizer_is_one_token_per_character():
    from tatk.synthetic.tinyllm import train_tokenizer

    tok = train_tokenizer(["the red boat sailed", "a green apple"], kind="char")
    text = "the zebra quietly sailed"  # letters never seen in training are still single tokens (byte alphabet)
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text) and tok.decode(ids) == text
    bpe = train_tokenizer(["the red boat sailed"] * 50, vocab_size=300)
    assert len(bpe("the red boat", add_special_tokens=False).input_ids) < len("the red boat")


def test_bpe_tokenizer_learns_whole_words_and_the_prompt_text():
    """With room in its vocabulary, the demo's BPE tokenizer makes every corpus word and the prompt's words one
    token each (as a real LLM vocabulary does): fewer decoder positions per row, the step's main cost."""
    from tatk.synthetic.sentences import make_splits
    from tatk.synthetic.tinyllm import train_tokenizer
    from tatk.train.speechlm import build_layout

    texts = [t.lower() for t in make_splits(300, 0, 0, seed=1)["train"]]
    tok = train_tokenizer(texts, vocab_size=2000, prompt_words=True)
    assert all(len(tok(t, add_special_tokens=False).input_ids) == len(t.split()) for t in texts)
    layout = build_layout(tok, "Transcribe: ")
    tokens = [tok.convert_ids_to_tokens(ids) for ids in (layout.prefix, layout.suffix)]
    assert tokens == [["<|im_start|>", "user", "Ċ", "Transcribe", ":", "Ġ"],  # then the audio, then:
                      ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ", "<think>", "ĊĊ", "</think>", "ĊĊ"]]
    plain = build_layout(train_tokenizer(texts, vocab_size=2000), "Transcribe: ")  # the prompt's words not learnt
    assert len(plain.prefix) + len(plain.suffix) >= len(layout.prefix) + len(layout.suffix) + 10  # 29 vs 15 here


def test_base_decoder_is_prompted_with_plain_text(tmp_path):
    """A base LM (`tinyllm --no-chat-template`, tried for the demo: docs/main-job.md) has the same tokenizer and weights
    as the chat one, and a 4-token plain prompt, "Transcribe: " + audio + newline, whose reply ends with its EOS."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from tatk.synthetic.sentences import make_splits
    from tatk.synthetic.tinyllm import build_tiny_llm
    from tatk.train.speechlm import build_layout

    texts = [t.lower() for t in make_splits(300, 0, 0, seed=1)["train"]]
    kw = dict(texts=texts, hidden=32, layers=1, bpe_vocab=2000, prompt_words=True)
    chat, base = build_tiny_llm(tmp_path / "chat", **kw), build_tiny_llm(tmp_path / "base", chat=False, **kw)
    tok = AutoTokenizer.from_pretrained(base)
    assert not tok.chat_template and AutoTokenizer.from_pretrained(chat).chat_template
    assert (base / "tokenizer.json").read_bytes() == (chat / "tokenizer.json").read_bytes()
    weights = load_file(base / "model.safetensors"), load_file(chat / "model.safetensors")
    assert weights[0].keys() == weights[1].keys() and all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    layout = build_layout(tok, "Transcribe: ")
    assert [tok.convert_ids_to_tokens(ids) for ids in (layout.prefix, layout.suffix)] == [["Transcribe", ":", "Ġ"], ["Ċ"]]
    assert layout.end_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
