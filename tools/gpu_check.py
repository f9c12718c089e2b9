"""One GPU check at real sizes (random weights, bf16), one table: run by tools/gpu_check.sh, ~10 min on one H200.

    bash tools/gpu_check.sh [--clips 200] [--steps 20] [--out DIR]
    bash tools/gpu_check.sh --cpu          # smoke mode: tiny models, a few clips, 2 steps (tests/test_gpu_check.py)

Rows, every one through tatk's own code (`tatk shard`, `tatk train`), each stage in its own process:

- shard throughput of the GLM-ASR-Nano encoder, audio-hours per GPU-hour, with `--window 30s` and `fit`
  (time from the first row read to the last tar written; model loading excluded), and of Whisper's encoder;
- stage 1 (GLM-ASR + Qwen3-0.6B) from feature shards vs the same recipe on audio shards, where the model runs
  the frozen encoder at every step (same corpus, same seed, same batches): samples/s, MFU, peak GPU memory;
- stage 2 (LoRA) of GLM-ASR + Qwen3-0.6B, and stage 1 of Whisper + SmolLM3-3B, from feature shards;
- stage 1 and stage 2 again under DeepSpeed ZeRO-2 and ZeRO-3 with one process (`accelerate launch`).

Corpus: espeak-ng sentences joined into clips of a LoquaciousSet-like length mix (1-30 s, mean ~8 s).
Throughput figures average the logged steps after the first (start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECONDS_PER_SENTENCE = 2.7  # espeak-ng at 170 wpm on tatk's synthetic sentences


# -- children: one stage each, run in a fresh process (and under accelerate launch for DeepSpeed) ----------
def child_shard(spec: dict) -> None:
    """``run_shard`` in this process; writes its timing figures to spec["result"]."""
    from tatk.data.corpus import CorpusSpec
    from tatk.shard.run import ShardConfig, run_shard

    corpus = CorpusSpec(dataset=spec["corpus"], subset="small", split="train")
    cfg = ShardConfig(out=Path(spec["out"]), corpus=corpus, encoder=spec["encoder"], window=spec.get("window"),
                      store=spec.get("store", "features"), batch_size=spec["batch_size"], command="gpu_check")
    figures = run_shard(cfg)
    Path(spec["result"]).write_text(json.dumps(figures | {"peak_gib": _peak_gib()}))


def child_train(spec: dict) -> None:
    """``tatk train`` in this process (one of ``accelerate launch``'s); writes the peak memory to spec["result"]."""
    from tatk.train.loop import train
    from tatk.train.recipe import load_recipe

    train(load_recipe(Path(spec["recipe"]), spec["overrides"]), resume=False)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(spec["result"]).write_text(json.dumps({"peak_gib": _peak_gib()}))


def _peak_gib() -> float:
    """Peak GPU memory allocated by this process, or its peak RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _child(kind: str, spec: dict, work: Path, launch: list[str] | None = None) -> dict:
    """Run a child stage; its result file as a dict plus ``wall_s``."""
    spec = dict(spec, result=str(work / f"result-{time.monotonic_ns()}.json"))
    (work / "spec.json").write_text(json.dumps(spec))
    me = [str(Path(__file__).resolve()), f"--child-{kind}", str(work / "spec.json")]
    cmd = ["accelerate", "launch", *launch, "--num_processes", "1", "--num_machines", "1", *me] if launch else [sys.executable, *me]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    if launch:
        env.pop("ACCELERATE_USE_CPU", None)  # DeepSpeed on CPU runs over gloo (tatk/train/loop.py)
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {spec.get('name', '')} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(Path(spec["result"]).read_text()) | {"wall_s": time.perf_counter() - t}


# -- set-up -----------------------------------------------------------------------------------------------
def build_models(root: Path, cpu: bool) -> dict[str, Path]:
    """Encoders and LLMs: published sizes (random, bf16) on GPU, tiny ones in smoke mode."""
    texts = ["hello world"]
    out = {k: root / k for k in ("glmasr", "whisper", "qwen3", "smollm3")}
    if all((p / "config.json").exists() for p in out.values()):
        return out
    if cpu:
        from tatk.synthetic.tiny import build_tiny_encoder
        from tatk.synthetic.tinyllm import build_tiny_llm, build_tiny_smollm3

        build_tiny_encoder("glmasr", out["glmasr"])
        build_tiny_encoder("whisper", out["whisper"])
        build_tiny_llm(out["qwen3"], texts=texts)
        build_tiny_smollm3(out["smollm3"], texts=texts)
    else:
        from tatk.synthetic.published import build_encoder, build_llm

        build_encoder("glmasr-nano", out["glmasr"])
        build_encoder("whisper-large-v3-turbo", out["whisper"])
        build_llm("qwen3-0.6b", out["qwen3"], texts)
        build_llm("smollm3-3b", out["smollm3"], texts)
    return out


def build_corpus(root: Path, clips: int, seed: int = 0) -> Path:
    """``clips`` training utterances whose lengths follow a LoquaciousSet-like mix (log-normal, median 6.5 s)."""
    from tatk.synthetic.sentences import random_sentence
    from tatk.synthetic.speech import write_corpus

    out = root / "corpus"
    if not out.exists():
        r = random.Random(seed)
        texts = []
        for _ in range(clips):
            seconds = min(max(r.lognormvariate(1.872, 0.7), 1.0), 29.0)  # exp(1.872) = 6.5 s
            texts.append(" ".join(random_sentence(r) for _ in range(max(1, round(seconds / SECONDS_PER_SENTENCE)))))
        write_corpus(out, {"train": texts}, layout="parquet", seed=seed)
    return out


def quick(steps: int, cpu: bool) -> list[str]:
    """Recipe overrides: short runs, checkpoints only at the end, no validation set, no tracker."""
    out = [f"train.steps={steps}", f"train.save_every={steps}", "train.log_every=1", "train.eval_every=0",
           "optim.warmup_steps=1", "data.workers=2", "data.round_shards=1", "log.wandb=off"]
    return out + (["data.workers=0", "data.max_tokens=1024", "data.group_size=4", "data.shuffle_buffer=4",
                   "projector.hidden=64"] if cpu else [])


# -- the checks -------------------------------------------------------------------------------------------
def _speed(run_dir: Path) -> dict:
    """Mean samples/s, LLM positions/s and MFU over the logged steps after the first."""
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "samples_per_s" in r]
    recs = recs[1:] or recs
    mean = lambda k: sum(r.get(k, 0.0) for r in recs) / len(recs)  # noqa: E731
    return {"samples_per_s": mean("samples_per_s"), "positions_per_s": mean("tokens_per_s"),
            "mfu": mean("mfu") if "mfu" in recs[0] else None, "steps": len(recs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="smoke mode: tiny models on CPU")
    parser.add_argument("--clips", type=int, help="corpus size (default 200; --cpu 6)")
    parser.add_argument("--steps", type=int, help="steps per training run (default 20; --cpu 2)")
    parser.add_argument("--out", type=Path, help="work folder (kept); default a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child-shard", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-train", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_shard or args.child_train:
        spec = json.loads((args.child_shard or args.child_train).read_text())
        return child_shard(spec) if args.child_shard else child_train(spec)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; use --cpu for the smoke mode")
    clips, steps = args.clips or (6 if args.cpu else 200), args.steps or (2 if args.cpu else 20)
    root = args.out or Path(tempfile.mkdtemp(prefix="tatk-gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models, corpus = build_models(root / "models", args.cpu), build_corpus(root, clips)
    print(f"models and corpus ready in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = run_checks(root, models, corpus, steps, args.cpu)
    print_table(rows, args.cpu, clips, steps)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def run_checks(root: Path, models: dict[str, Path], corpus: Path, steps: int, cpu: bool) -> list[dict]:
    """Every check, in order; one row each."""
    work, rows = root / "work", []
    work.mkdir(exist_ok=True)
    batch = 4 if cpu else 32
    shards = {}
    for name, encoder, window, store in [("GLM-ASR 30s", "glmasr", "30s", "features"), ("GLM-ASR fit", "glmasr", "fit", "features"),
                                         ("GLM-ASR audio", "glmasr", "30s", "audio"), ("Whisper 30s", "whisper", None, "features")]:
        out = root / "shards" / name.replace(" ", "-")
        r = _child("shard", {"name": name, "corpus": str(corpus), "out": str(out), "encoder": str(models[encoder]),
                             "window": window, "store": store, "batch_size": batch}, work)
        shards[name] = out
        if store == "features":
            rows.append({"check": f"shard, {name} encoder", "audio_h_per_gpu_h": r["audio_s"] / r["wall_s"],
                         "forward_share": r["forward_s"] / r["wall_s"], "peak_gib": r["peak_gib"], "wall_s": r["wall_s"]})
    dims = {"glmasr": 64, "whisper": 64} if cpu else {"glmasr": 1280, "whisper": 1280}
    base = quick(steps, cpu) + ["eval.max_samples=2", "eval.wer_samples=1", "eval.max_new_tokens=4"]

    def train(name: str, recipe: str, encoder: str, llm: str, data: Path, extra: list[str], launch=None) -> Path:
        run_dir = root / "runs" / re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")
        sets = base + [f"features.encoder={models[encoder]}", f"features.dim={dims[encoder]}", f"model.llm={models[llm]}",
                       f"data.train.0.path={data}", "data.train.0.split=train", f"data.val.path={data}", "data.val.split=train",
                       f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}"] + extra
        r = _child("train", {"name": name, "recipe": str(REPO / recipe), "overrides": sets}, work, launch)
        rows.append({"check": name, **_speed(run_dir), "peak_gib": r["peak_gib"], "wall_s": r["wall_s"]})
        return run_dir / "checkpoints" / f"step-{steps:06d}"

    s1 = train("stage 1, GLM-ASR + Qwen3-0.6B, from shards", "recipes/stage1.toml", "glmasr", "qwen3", shards["GLM-ASR 30s"], [])
    train("stage 1, GLM-ASR + Qwen3-0.6B, encoder every step", "recipes/stage1.toml", "glmasr", "qwen3",
          shards["GLM-ASR audio"], ["data.content=audio"])
    stage2 = [f"model.init_from={s1}"] + (["projector.hidden=64"] if cpu else [])
    train("stage 2 (LoRA), GLM-ASR + Qwen3-0.6B", "recipes/stage2.toml", "glmasr", "qwen3", shards["GLM-ASR 30s"], stage2)
    train("stage 1, Whisper + SmolLM3-3B, from shards", "recipes/whisper-smollm3.toml", "whisper", "smollm3",
          shards["Whisper 30s"], [])
    for zero in ("zero2", "zero3"):
        launch = ["--config_file", str(REPO / "accelerate" / f"{zero}.yaml")]
        train(f"stage 1, GLM-ASR + Qwen3-0.6B, ZeRO-{zero[-1]}", "recipes/stage1.toml", "glmasr", "qwen3",
              shards["GLM-ASR 30s"], [], launch)
        train(f"stage 2 (LoRA), GLM-ASR + Qwen3-0.6B, ZeRO-{zero[-1]}", "recipes/stage2.toml", "glmasr", "qwen3",
              shards["GLM-ASR 30s"], stage2, launch)
    return rows


def print_table(rows: list[dict], cpu: bool, clips: int, steps: int) -> None:
    """One markdown table: shard rows give audio-h per device-hour, training rows samples/s, MFU and memory."""
    import torch

    device = "CPU (smoke mode, tiny models)" if cpu else torch.cuda.get_device_name()
    memory = "peak RSS GiB" if cpu else "peak GPU GiB"
    print(f"\n{device}; torch {torch.__version__}; {clips} clips; {steps} steps per training run\n")
    print(f"| check | audio-h per device-h | samples/s | LLM positions/s | MFU | {memory} | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        audio = f"{r['audio_h_per_gpu_h']:,.0f}" if "audio_h_per_gpu_h" in r else ""
        speed = f"{r['samples_per_s']:.2f}" if "samples_per_s" in r else ""
        positions = f"{r['positions_per_s']:,.0f}" if "positions_per_s" in r else ""
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else ""
        print(f"| {r['check']} | {audio} | {speed} | {positions} | {mfu} | {r['peak_gib']:.1f} | {r['wall_s']:.0f} |")
    by = {r["check"]: r for r in rows}
    fit, full = by.get("shard, GLM-ASR fit encoder"), by.get("shard, GLM-ASR 30s encoder")
    shards, audio = (by.get(f"stage 1, GLM-ASR + Qwen3-0.6B, {k}") for k in ("from shards", "encoder every step"))
    if fit and full:
        print(f"\nfit / 30s shard throughput: {fit['audio_h_per_gpu_h'] / full['audio_h_per_gpu_h']:.2f}×")
    if shards and audio:
        print(f"stage 1 from shards / encoder every step: {shards['samples_per_s'] / audio['samples_per_s']:.2f}×")


if __name__ == "__main__":
    main()
