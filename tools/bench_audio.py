"""Benchmark (not a test): feature shards vs audio shards (`tatk shard --store audio`). Prints markdown tables.

In one run, on whatever device is present (CPU here; a GPU if available), on espeak-ng speech and a
tiny random GLM-ASR-style encoder (``--hidden`` × ``--layers``, 30-s windows as GLM-ASR) + tiny Qwen3-style LLM:

1. disk: shard bytes per audio-second, features (fp16) vs FLAC audio, and sharding wall time of each;
2. training step time (forward + backward + AdamW, decoder frozen) from stored features, from audio with
   the frozen encoder run at every step, and from audio with encoder LoRA (r 8 on q/k) — the same
   utterances in the same batches; plus the data-worker cost per batch of audio (FLAC decode + log-mel),
   which training overlaps with the step in DataLoader workers.

    python tools/bench_audio.py [--utterances 96] [--batches 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tatk.train.collate import Codec
from tatk.train.validate import val_batches
from tatk.train.speechlm import IGNORE, build_model
from tatk.train.recipe import load_recipe
from tatk.synthetic.sentences import make_splits
from tatk.synthetic.speech import write_corpus
from tatk.synthetic.tiny import build_tiny_encoder
from tatk.synthetic.tinyllm import build_tiny_llm
from tatk.train.optim import param_groups


def shard(corpus: Path, encoder: Path, out: Path, *extra: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tatk", "shard", "--local", str(corpus), "--encoder", str(encoder),
                    "--out", str(out), *extra], check=True, capture_output=True)
    return time.perf_counter() - t


def recipe(tmp: Path, encoder: Path, llm: Path, shards: Path, content: str, train_encoder: str) -> Path:
    path = tmp / f"{content}-{train_encoder}.toml"
    path.write_text(f"""
[run]
out_dir = "{tmp / 'runs'}"
[features]
encoder = "{encoder}"
dim = {json.loads((shards / 'manifest.json').read_text())['encoder']['dim']}
[model]
llm = "{llm}"
encoder = "{train_encoder}"
[projector]
hidden = 256
[[data.train]]
path = "{shards}"
[data.val]
path = "{shards}"
[data]
content = "{content}"
max_tokens = 1024
group_size = 64
""")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--utterances", type=int, default=96)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="tatk-bench-audio-"))
    splits = make_splits(args.utterances, 0, 0, seed=3)
    write_corpus(tmp / "corpus", {"train": splits["train"]}, layout="folder", seed=3)
    encoder = build_tiny_encoder("glmasr", tmp / "encoder", hidden=args.hidden, layers=args.layers)
    llm = build_tiny_llm(tmp / "llm", hidden=256, layers=4, texts=[t.lower() for t in splits["train"]])

    wall_f = shard(tmp / "corpus", encoder, tmp / "feats")
    wall_a = shard(tmp / "corpus", encoder, tmp / "audio", "--store", "audio")
    seconds = json.loads((tmp / "audio" / "manifest.json").read_text())["splits"]["train"]["hours"] * 3600
    size = {k: sum(p.stat().st_size for p in (tmp / k).glob("*.tar")) for k in ("feats", "audio")}

    variants = {"stored features": ("features", "frozen"), "audio, frozen encoder": ("audio", "frozen"),
                "audio, encoder LoRA r 8 q/k": ("audio", "lora")}
    timings, prep = {}, 0.0
    for name, (content, train_encoder) in variants.items():
        r = load_recipe(recipe(tmp, encoder, llm, tmp / ("audio" if content == "audio" else "feats"), content, train_encoder), [])
        r.data.val.split = "train"
        model = build_model(r, None, torch.float32).to(device).train()
        codec = Codec(model.tokenizer, model.layout, model.projector.output_length,
                      audio=model.encoder.inputs if model.encoder is not None else None)
        stream, raw = val_batches(r, codec, 0, 1), []
        t = time.perf_counter()
        for _ in range(args.batches + 1):
            raw.append(next(stream)[0])
        if content == "audio" and train_encoder == "frozen":
            prep = (time.perf_counter() - t) / len(raw)
        batches = [{k: v.to(device) for k, v in b.items() if torch.is_tensor(v)} for b in raw]
        optimizer = torch.optim.AdamW(param_groups(model, r.optim))

        def step(b):
            n = int((b["labels"][:, 1:] != IGNORE).sum())
            (model(b, reduction="sum") / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step(batches[0])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for b in batches[1:]:
            step(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = ((time.perf_counter() - t) / args.batches, sum(b["n_samples"] for b in raw[1:]) / args.batches)

    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nDevice: {dev}; {args.utterances} espeak-ng utterances ({seconds:.0f} s of audio); tiny GLM-ASR-style "
          f"encoder {args.layers} × {args.hidden} on 30-s windows; LLM hidden 256 × 4 layers, frozen\n")
    print("| shards | bytes per audio-second | sharding wall time |\n|---|---|---|")
    print(f"| features (fp16, dim {args.hidden}, 50 frames/s) | {size['feats'] / seconds:,.0f} | {wall_f:.1f} s |")
    print(f"| audio (FLAC, 16-bit, 16 kHz) | {size['audio'] / seconds:,.0f} | {wall_a:.1f} s |")
    print(f"\n| training step ({timings['stored features'][1]:.1f} utterances/batch) | ms/step | vs stored features |\n|---|---|---|")
    base = timings["stored features"][0]
    for name, (t, _) in timings.items():
        print(f"| {name} | {1000 * t:.0f} | {t / base:.1f}× |")
    print(f"| data-worker prep per audio batch (FLAC decode + 30-s log-mel), overlapped | {1000 * prep:.0f} | |")


if __name__ == "__main__":
    main()
