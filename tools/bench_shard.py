"""Benchmark `tatk shard`: audio-seconds per wall-second, and the share of wall time outside the encoder.

    python tools/bench_shard.py [--utterances 200] [--workers 1]

Runs, in one process and on one synthesized corpus, the `mel` encoder and a small random GLM-ASR
encoder (a real transformer: 4 layers, 256 wide), and prints a markdown table for the README.
"Outside" is everything but the encoder's forward pass: reading, decoding, resampling, log-mel,
writing tars — the overhead sharding adds on top of the model.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from tatk.data.corpus import CorpusSpec
from tatk.shard.run import ShardConfig, run_shard
from tatk.synthetic.sentences import make_splits
from tatk.synthetic.speech import write_corpus
from tatk.synthetic.tiny import build_tiny_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tatk-bench-shard-"))
    write_corpus(tmp / "corpus", make_splits(args.utterances, 0, 0, seed=0), layout="parquet", seed=0)
    glm = build_tiny_encoder("glmasr", tmp / "glmasr", hidden=256, layers=4)
    rows = []
    for label, encoder in [("mel (log-mel, no network)", "mel:80"), ("GLM-ASR-style encoder, 4×256, random", str(glm))]:
        corpus = CorpusSpec(dataset=str(tmp / "corpus"), subset="small")
        cfg = ShardConfig(out=tmp / f"out-{len(rows)}", corpus=corpus, encoder=encoder,
                          workers=args.workers, batch_size=args.batch_size, command="bench")
        r = run_shard(cfg)
        rows.append((label, r["audio_s"] / r["wall_s"], 1 - r["forward_s"] / r["wall_s"], r["audio_s"], r["wall_s"]))

    print(f"\nMachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; {args.utterances} utterances, workers={args.workers}, batch={args.batch_size}\n")
    print("| encoder | audio-s / wall-s | wall share outside encoder forward | audio s | wall s |")
    print("|---|---|---|---|---|")
    for label, speed, outside, audio, wall in rows:
        print(f"| {label} | {speed:.1f} | {outside:.1%} | {audio:.0f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
