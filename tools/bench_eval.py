"""Benchmark `tatk eval`: RTFx of batched vs one-utterance-at-a-time transcription. Prints markdown tables.

    python tools/bench_eval.py [--test 64] [--batch-sizes 16 64] [--work DIR]

Builds (or reuses, with ``--work``) a tiny trained recognizer exactly as the test fixture does:
espeak-ng speech → tiny random GLM-ASR encoder → `tatk shard` → `tatk train` (projector + full tiny
Qwen3-style decoder). Then, with that one checkpoint and the same test utterances:

1. audio mode, end to end (encoder + projector + LLM through ``tatk.export.load_pipeline``),
   each of ``--batch-sizes`` vs batch 1;
2. shard mode (stored features through ``SpeechLM.generate``), the same batch sizes.

Variants run interleaved, ``--passes`` times, and the best RTFx of each is kept: other load on a shared
machine then hits every variant alike. ``wall_s`` / RTFx time transcription only, as `tatk eval` does.
On a CPU shared with other jobs, run with ``OMP_NUM_THREADS=1``: torch threads waiting on a descheduled
sibling made 2-thread runs 10-60x slower and erratic on the 2-core machine the README figures come from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch


def build(root: Path, n_train: int, n_test: int, steps: int) -> Path:
    """Corpus, encoder, LLM, shards and a trained run under ``root`` (kept; re-used when present)."""
    import pyarrow.parquet as pq

    from tatk.data.corpus import CorpusSpec
    from tatk.train.recipe import load_recipe
    from tatk.shard.run import ShardConfig, run_shard
    from tatk.synthetic.sentences import make_splits
    from tatk.synthetic.speech import write_corpus
    from tatk.synthetic.tiny import build_tiny_encoder
    from tatk.synthetic.tinyllm import build_tiny_llm
    from tatk.train.loop import train

    corpus, shards, run = root / "corpus", root / "shards", root / "runs" / "asr"
    if not (corpus / "README.md").exists():
        write_corpus(corpus, make_splits(n_train, 0, n_test, seed=3), layout="parquet", seed=3)
    if not (root / "encoder" / "config.json").exists():
        build_tiny_encoder("glmasr", root / "encoder")
    if not (root / "llm" / "config.json").exists():
        texts = [t.lower() for f in sorted(corpus.rglob("*train*.parquet"))
                 for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]
        build_tiny_llm(root / "llm", texts=texts)
    for split in ("train", "test"):
        if not (shards / "manifest.json").exists() or split not in (shards / "manifest.json").read_text():
            run_shard(ShardConfig(out=shards, corpus=CorpusSpec(dataset=str(corpus), subset="small", split=split),
                                  encoder=str(root / "encoder"), command="bench"))
    if not (run / "checkpoints").is_dir() or not any((run / "checkpoints").glob("step-*")):
        recipe = root / "recipe.toml"
        recipe.write_text(f"""
[run]
name = "asr"
out_dir = "{root / 'runs'}"
[features]
encoder = "{root / 'encoder'}"
dim = 64
[model]
llm = "{root / 'llm'}"
decoder = "full"
[projector]
stack = 4
hidden = 64
[[data.train]]
path = "{shards}"
[data]
max_tokens = 2048
group_size = 16
shuffle_buffer = 16
round_shards = 1
workers = 0
[optim]
lr = 2e-3
llm_lr = 1e-3
warmup_steps = 5
[train]
steps = {steps}
save_every = {steps}
log_every = 10
[log]
wandb = "off"
""")
        train(load_recipe(recipe, []), resume=False)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=96, help="training utterances of the toy model")
    parser.add_argument("--test", type=int, default=64, help="test utterances evaluated")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the toy model")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64], help="batch sizes compared with batch 1")
    parser.add_argument("--passes", type=int, default=2, help="passes over all variants; the best is kept")
    parser.add_argument("--work", type=Path, help="build/reuse the toy model here (default: a new temp folder)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = args.work or Path(tempfile.mkdtemp(prefix="tatk-bench-eval-"))
    root.mkdir(parents=True, exist_ok=True)
    run = build(root, args.train, args.test, args.steps)

    from tatk.evaluate.run import EvalOptions, run_eval

    modes = {"audio": dict(dataset=str(root / "corpus"), subset="small"), "shards": dict(data=root / "shards")}
    sizes = [1, *args.batch_sizes]
    best: dict[tuple[str, int], dict] = {}
    hyps: dict[tuple[str, int], list] = {}
    for _ in range(args.passes):  # variants interleaved, best of the passes: other load on the machine hits all alike
        for mode, data in modes.items():
            for batch in sizes:
                out = root / f"eval-{mode}-{batch}"
                s = run_eval(EvalOptions(model=str(run), split="test", batch_size=batch, out=out, **data))
                if (mode, batch) not in best or s["rtfx"] > best[mode, batch]["rtfx"]:
                    best[mode, batch] = s
                rows = map(json.loads, (out / "utterances.jsonl").read_text().splitlines())
                hyps[mode, batch] = sorted((r["id"], r["hypothesis"]) for r in rows)

    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}; {args.test} test utterances "
          f"({best['shards', 1]['audio_hours'] * 3600:.0f} s of audio), best of {args.passes} passes\n")
    for mode, title in (("audio", "Audio mode, end to end (encoder + projector + LLM, through load_pipeline)"),
                        ("shards", "Shard mode (stored features → projector + LLM, SpeechLM.generate)")):
        one = best[mode, 1]
        print(f"{title}:\n")
        print("| batch | RTFx | × batch 1 | wall s | WER | transcripts identical to batch 1 |")
        print("|---|---|---|---|---|---|")
        for b in sizes:
            s = best[mode, b]
            same = sum(x == y for x, y in zip(hyps[mode, b], hyps[mode, 1]))
            print(f"| {b} | {s['rtfx']:.1f} | {s['rtfx'] / one['rtfx']:.1f}× | {s['wall_s']:.2f} | {s['wer']:.2%} "
                  f"| {same}/{len(hyps[mode, 1])} |")
        print()

if __name__ == "__main__":
    main()
