"""Benchmark `tatk shard`: audio-seconds per wall-second, the share of wall time outside the encoder,
and how the work spreads over workers and processes.

    python tools/bench_shard.py [--utterances 200] [--workers 1] [--scale-utterances 1200 --files 8]

Table 1 runs, in one process and on one synthesized corpus, the `mel` encoder and a small random
GLM-ASR encoder (a real transformer: 4 layers, 256 wide). "Outside" is everything but the encoder's
forward pass: reading, decoding, resampling, log-mel, writing tars — the overhead sharding adds on top
of the model.

Table 2 shards a LoquaciousSet-shaped corpus of ``--files`` parquet files with the `mel` encoder
(decode-bound) at three shapes: 1 process × 1 worker, 1 process × 2 workers, and 2 processes × 1 worker
on one output folder. Each process is started first and timed from when the first one starts sharding
to when the last one ends (imports excluded). "Read" is the source bytes each process read (counted
by tatk's reader) over the split's parquet bytes: 1/N per process and 1.0× in total is the target
(before units, each of N processes streamed the whole corpus: N× in total).
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tatk.data.corpus import CorpusSpec
from tatk.shard.run import ShardConfig, run_shard
from tatk.synthetic.sentences import make_splits
from tatk.synthetic.speech import write_corpus
from tatk.synthetic.tiny import build_tiny_encoder


def _timed_shard(cfg: ShardConfig, ready, go, results) -> None:
    """One sharding process: wait until every process is up, then shard and report (start, end, figures)."""
    # A spawned process spawns its DataLoader workers too (each re-importing torch); `tatk shard`
    # forks them, so fork here as well, or worker start-up would be what this measures.
    multiprocessing.set_start_method("fork", force=True)
    ready.put(1)
    go.wait()
    start = time.time()
    r = run_shard(cfg)
    results.put((start, time.time(), r))


def scale_rows(tmp: Path, utterances: int, files: int, repeats: int) -> list[tuple]:
    """Table 2: throughput and source bytes read per process at three shapes (see the module docstring)."""
    corpus = tmp / f"scale-corpus-{utterances}x{files}"
    if not (corpus / "README.md").exists():  # kept in --work and re-used
        write_corpus(corpus, make_splits(utterances, 0, 0, seed=5), layout="parquet", seed=5, rows_per_shard=-(-utterances // files))
    corpus_bytes = sum(p.stat().st_size for p in (corpus / "small").glob("train-*.parquet"))
    ctx = multiprocessing.get_context("spawn")
    shapes = [("1 process × 1 worker", 1, 1), ("1 process × 2 workers", 1, 2), ("2 processes × 1 worker", 2, 1)]
    best: dict[str, tuple] = {}
    # Shapes interleaved over the repeats, best wall time kept: on a shared machine the load drifts.
    for repeat in range(repeats):
        for label, processes, workers in shapes:
            cfg = ShardConfig(out=tmp / f"shards-{processes}x{workers}-{repeat}", encoder="mel:80", workers=workers,
                              corpus=CorpusSpec(dataset=str(corpus), subset="small"), command="bench")
            ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_timed_shard, args=(cfg, ready, go, results)) for _ in range(processes)]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get()
            go.set()
            got = [results.get() for _ in procs]
            for p in procs:
                p.join()
            wall = max(g[1] for g in got) - min(g[0] for g in got)
            audio = sum(g[2]["audio_s"] for g in got)
            per_process = [g[2]["read_bytes"] / corpus_bytes for g in got]
            if label not in best or wall < best[label][3]:
                best[label] = (label, audio / wall, audio, wall, per_process, sum(per_process))
    rows = [best[label] for label, _, _ in shapes]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=200, help="table 1's corpus size (0: skip table 1)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--scale-utterances", type=int, default=1200, help="table 2's corpus size (0: skip table 2)")
    parser.add_argument("--files", type=int, default=8, help="table 2's parquet files (units)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one); "
                        "table 2's corpus is re-used from it when present")
    parser.add_argument("--repeats", type=int, default=3, help="table 2: runs per shape, the fastest kept")
    args = parser.parse_args()

    tmp = args.work or Path(tempfile.mkdtemp(prefix="tatk-bench-shard-"))
    for old in tmp.glob("shards-*x*-*"):  # shard folders of an earlier run in the same --work
        shutil.rmtree(old)
    if args.scale_utterances:
        scale = scale_rows(tmp, args.scale_utterances, args.files, args.repeats)
        print(f"\n{args.scale_utterances} utterances in {args.files} parquet files, mel encoder, batch 16, "
              f"fastest of {args.repeats} runs per shape\n")
        print("| shape | audio-s / wall-s | audio s | wall s | source read per process (× corpus) | read in total |")
        print("|---|---|---|---|---|---|")
        for label, speed, audio, wall, per_process, total in scale:
            print(f"| {label} | {speed:.1f} | {audio:.0f} | {wall:.1f} | {', '.join(f'{x:.2f}' for x in per_process)} | {total:.2f}× |")
    if not args.utterances:
        return
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
