"""Word-start accuracy of CTC forced alignment on held-out espeak-ng sentences (docs/model-features.md).

    python tools/bench_align.py [ALIGNER_FOLDER]   # without a folder: trains the tiny aligner (timed) first

Prints, for the tiny trained aligner, the same aligner untrained, and words spread over the clip by their
lengths without listening: the median and 90th percentile of |aligned start - espeak-ng's start| and the share
of words within 200 ms, on the held-out clips of tests/test_align.py.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tatk.model.align import CtcAligner, spread
from tatk.synthetic.aligner import build_tiny_aligner, clip_plans, spoken_clips


def errors(clips, spans_of) -> np.ndarray:
    out = []
    for c in clips:
        out += [abs(a - s) for (a, _), s in zip(spans_of(c), c["starts"]) if s is not None]
    return np.asarray(out)


def aligned(folder):
    aligner = CtcAligner.load(str(folder))
    return lambda c: [w["timestamp"] for w in aligner.words(c["wave"], c["text"])]


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-align-"))
    if len(sys.argv) > 1:
        trained = Path(sys.argv[1])
    else:
        start = time.perf_counter()
        trained = build_tiny_aligner(tmp / "trained")
        print(f"trained the tiny aligner in {time.perf_counter() - start:.0f} s")
    held_out = {text for text, *_ in clip_plans(240, seed=0)}
    clips = [c for c in spoken_clips(40, seed=99) if c["text"] not in held_out]
    rows = {
        "tiny trained aligner": errors(clips, aligned(trained)),
        "same aligner untrained": errors(clips, aligned(build_tiny_aligner(tmp / "untrained", steps=0))),
        "no audio: words spread by length": errors(
            clips, lambda c: spread([len(w) for w in c["text"].split()], 0.0, len(c["wave"]) / 16_000)),
    }
    print(f"{len(clips)} held-out clips, {len(rows['tiny trained aligner'])} scored words")
    print("| word-start error | median | 90th percentile | within 200 ms |\n|---|---|---|---|")
    for name, e in rows.items():
        print(f"| {name} | {1000 * np.median(e):.0f} ms | {1000 * np.quantile(e, 0.9):.0f} ms | {100 * np.mean(e < 0.2):.0f} % |")


if __name__ == "__main__":
    main()
