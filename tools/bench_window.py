"""Benchmark GLM-ASR encoder windows: encoder seconds per audio hour, `fit` vs `30s`, side by side in one run.

    python tools/bench_window.py [--clips 5] [--seed 0]

The encoder is GLM-ASR-Nano's at its published size (32 × 1280, ~630 M parameters, random weights: cost does
not depend on the weights), run on CPU in fp32 through tatk's own ``AudioEncoder`` (the code `tatk shard` and
exported pipelines run). Clips follow a LoquaciousSet-like length mix: a log-normal (median 6.5 s, sigma 0.7,
mean ~8.3 s) clipped to 1–40 s, taken at evenly spaced quantiles so a few clips span the mix; each clip is
espeak-ng sentences concatenated and cut to its length. Each clip is encoded alone with `fit`, then with `30s`,
so load on a shared machine falls on both alike. Clips over 30 s are cut into 30-s pieces first (as the
pipeline and GLM-ASR's processor do): with `30s` every piece costs a full window, with `fit` only the last one
is shorter.

Two ratios are printed: the measured one on these clips, and the one expected on the whole mix (1–40 s),
from the measured cost per window length (interpolated in padded seconds, the 30-s window measured too).
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import time
from statistics import NormalDist

import numpy as np
import torch

MEDIAN_S, SIGMA, LO, HI = 6.5, 0.7, 1.0, 40.0
STD_NORMAL = NormalDist()
SR = 16_000


def durations(k: int) -> list[float]:
    """``k`` clip lengths at evenly spaced quantiles of the clipped log-normal mix."""
    q = (np.arange(k) + 0.5) / k
    return [float(np.clip(MEDIAN_S * math.exp(SIGMA * STD_NORMAL.inv_cdf(p)), LO, HI)) for p in q]


def speech(seconds: float, rng: random.Random) -> np.ndarray:
    """espeak-ng sentences, concatenated with short pauses, cut to ``seconds`` (16 kHz)."""
    import soxr

    from tatk.synthetic.sentences import random_sentence
    from tatk.synthetic.speech import synthesize

    parts, total = [], 0
    while total < seconds * SR:
        wave, rate = synthesize(random_sentence(rng))
        wave = soxr.resample(wave, rate, SR) if rate != SR else wave
        parts += [wave, np.zeros(int(0.3 * SR), np.float32)]
        total += len(wave) + int(0.3 * SR)
    return np.concatenate(parts)[: int(seconds * SR)].astype(np.float32)


def pieces(wave: np.ndarray) -> list[np.ndarray]:
    """30-s pieces of a clip (one piece for clips up to 30 s)."""
    step = 30 * SR
    return [wave[i : i + step] for i in range(0, len(wave), step)]


def timed(encoder, wave: np.ndarray) -> float:
    """Encoder seconds (prepare + forward) for one clip, its pieces encoded one at a time."""
    t = time.perf_counter()
    for piece in pieces(wave):
        encoder.encode([encoder.prepare(piece)])
    return time.perf_counter() - t


def encoder_flops(padded_s: float, d: int = 1280, inter: int = 5120, layers: int = 32, mels: int = 128) -> float:
    """Forward FLOPs of GLM-ASR-Nano's encoder on a window of ``padded_s`` seconds (100 mel frames/s, 50 out):
    the conv stem, then per layer the projections and MLP (2 · weights · frames) and attention (4 · frames² · d)."""
    m, t = 100 * padded_s, 50 * padded_s
    conv = 2 * 3 * (mels * d * m + d * d * t)
    return conv + layers * (2 * (4 * d * d + 2 * d * inter) * t + 4 * t * t * d)


def mix_ratio(cost) -> float:
    """30s / fit encoder cost over the whole 1–40 s mix, for ``cost(padded seconds)`` of one window."""
    z = np.linspace(-4, 4, 4001)
    d = np.clip(MEDIAN_S * np.exp(SIGMA * z), LO, HI)
    w = np.array([STD_NORMAL.pdf(x) for x in z])
    full = np.array([math.ceil(x / 30) * cost(30) for x in d])
    fit = np.array([(x // 30) * cost(30) + (cost(math.ceil(x % 30)) if x % 30 else 0) for x in d])
    return float((w * full).sum() / (w * fit).sum())


def main() -> None:
    from tatk.model.encoder import AudioEncoder
    from tatk.synthetic.published import encoder_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    model, extractor = encoder_model("glmasr-nano", args.seed)
    model = model.float().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    enc = {w: AudioEncoder("glmasr", extractor, model, window=w) for w in ("fit", "30s")}
    rng = random.Random(args.seed)
    clips = [speech(s, rng) for s in durations(args.clips)]
    print(f"built the encoder ({n_params / 1e6:.0f} M parameters) and {len(clips)} clips in {time.perf_counter() - t0:.0f} s")
    timed(enc["fit"], clips[0][: SR])  # warm-up (allocator, kernels), not counted
    spent, relative = {"fit": 0.0, "30s": 0.0}, {30: 1.0}
    rows = []
    for wave in clips:
        t_fit, t_full = timed(enc["fit"], wave), timed(enc["30s"], wave)
        spent["fit"] += t_fit
        spent["30s"] += t_full
        secs = len(wave) / SR
        if secs <= 30:  # fit's cost as a share of the 30-s window measured right after it (same load)
            relative[math.ceil(secs)] = t_fit / t_full
        rows.append((secs, t_fit, t_full))
        print(f"  clip {secs:5.1f} s: fit {t_fit:6.1f} s, 30s {t_full:6.1f} s", flush=True)
    audio_h = sum(r[0] for r in rows) / 3600
    xs = sorted(relative)
    measured = lambda p: float(np.interp(p, xs, [relative[x] for x in xs]))  # noqa: E731
    clip_flops = [(math.ceil(r[0] / 30) * encoder_flops(30),
                   (r[0] // 30) * encoder_flops(30) + encoder_flops(math.ceil(r[0] % 30))) for r in rows]
    print(f"\nMachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; GLM-ASR-Nano encoder at its published size, random weights, fp32 on CPU; "
          f"{len(rows)} clips, {audio_h * 3600:.1f} s of audio (mean {audio_h * 3600 / len(rows):.1f} s)\n")
    print("| | these clips, measured | these clips, FLOPs | whole 1–40 s mix, from the measured shares | whole mix, FLOPs |")
    print("|---|---|---|---|---|")
    print(f"| 30s: encoder s per audio hour | {spent['30s'] / audio_h:,.0f} | | | |")
    print(f"| fit: encoder s per audio hour | {spent['fit'] / audio_h:,.0f} | | | |")
    print(f"| **30s / fit** | **{spent['30s'] / spent['fit']:.2f}×** | {sum(f for f, _ in clip_flops) / sum(f for _, f in clip_flops):.2f}× "
          f"| {mix_ratio(measured):.2f}× | {mix_ratio(encoder_flops):.2f}× |")


if __name__ == "__main__":
    main()
