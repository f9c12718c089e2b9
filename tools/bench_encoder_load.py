"""Benchmark (not a test): loading GLM-ASR-Nano's encoder out of its whole speech-to-text checkpoint.

GLM-ASR-Nano-2512 is published as one speech model, its 635 M-parameter encoder beside a 1.5 B-parameter LLM.
tatk (``tatk.model.encoder.load_audio_model``) builds the encoder alone and loads only its tensors; the direct way
loads the whole model and keeps its ``audio_tower``. Each way runs in a fresh process, in bf16 (a GPU's dtype: the
weights stay memory-mapped) and in fp32 (a CPU's: every loaded tensor is converted, so it is materialised), and
reports its wall time and peak resident memory (``VmHWM``, which counts the mapped pages it touched).

The checkpoint: transformers' ``GlmAsrConfig()`` (its docstring's GLM-ASR-Nano-2512; 2.14 B parameters), random
weights saved bf16 with ``save_pretrained`` into ``--folder`` (built once, 4.3 GB; ~40 s).

    python tools/bench_encoder_load.py [--folder models/glmasr-nano-asr]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

LOAD = """import json, re, sys, time, torch
from transformers import AutoConfig, GlmAsrForConditionalGeneration
from tatk.model.encoder import load_audio_model
folder, way, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
start = time.perf_counter()
if way == "tatk":
    encoder = load_audio_model(folder, AutoConfig.from_pretrained(folder), dtype)
else:
    encoder = GlmAsrForConditionalGeneration.from_pretrained(folder, dtype=dtype).model.audio_tower
wall = time.perf_counter() - start
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"wall": wall, "peak": peak, "parameters": sum(p.numel() for p in encoder.parameters())}))
"""


def build(folder: Path) -> None:
    """GLM-ASR-Nano-2512's shape, random weights, bf16, as ``save_pretrained`` writes it (no tatk code involved),
    written beside ``folder`` and renamed into place when complete: an interrupted build is redone, not used."""
    import shutil

    import torch
    from transformers import GlmAsrConfig, GlmAsrForConditionalGeneration, WhisperFeatureExtractor

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    GlmAsrForConditionalGeneration(GlmAsrConfig()).save_pretrained(partial)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(partial)
    partial.rename(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("models/glmasr-nano-asr"))
    args = parser.parse_args()
    if not args.folder.exists():
        build(args.folder)
    print(f"{platform.processor() or platform.machine()}, torch in fresh processes; {args.folder}\n")
    print("| dtype | way | wall s | peak resident GB | encoder parameters |\n|---|---|---|---|---|")
    for dtype in ("bfloat16", "float32"):
        for way in ("whole", "tatk"):
            done = subprocess.run([sys.executable, "-c", LOAD, str(args.folder), way, dtype], capture_output=True,
                                  text=True, check=True)
            r = json.loads(done.stdout.split("\n")[-2])
            label = "whole model, its audio_tower" if way == "whole" else "tatk: the encoder alone"
            print(f"| {dtype} | {label} | {r['wall']:.1f} | {r['peak'] / 1e9:.2f} | {r['parameters'] / 1e6:.0f} M |")


if __name__ == "__main__":
    main()
