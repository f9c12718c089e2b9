"""Real-size rehearsal: each recipe family's published encoder and LLM (random weights, bf16 on disk) through
`tatk shard` → `tatk train` (stage 1, then stage 2 with LoRA) → `tatk eval` → `tatk export` → transformers.pipeline.

    python tools/rehearse.py [--family glmasr-qwen3 ...] [--clips 4] [--window 30s|fit] [--out DIR] [--json FILE]

Every stage runs as its own process, exactly as a user runs it (`python -m tatk ...`), with 2 optimizer steps
per training stage on a few espeak-ng clips, which are then evaluated and transcribed. One table per family: wall time and peak RSS per stage (the
stage's process, from wait4), trainable and total parameters, the feature dim and LLM positions per second
(training's own tokens_per_s). `--json` also writes the figures and the transcripts, for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# family: (encoder, LLM, stage-1 recipe). Stage 2 is recipes/stage2.toml (LoRA) on the family's models.
FAMILIES = {
    "glmasr-qwen3": ("glmasr-nano", "qwen3-0.6b", "recipes/stage1.toml"),
    "whisper-smollm3": ("whisper-large-v3-turbo", "smollm3-3b", "recipes/whisper-smollm3.toml"),
    "hubert-smollm3": ("hubert-large", "smollm3-3b", "recipes/hubert-smollm3.toml"),
}
# Small, fast settings on top of each recipe: the shapes stay the family's, only the amount of work shrinks.
QUICK = ["train.steps=2", "train.save_every=2", "train.log_every=1", "train.eval_every=0", "optim.warmup_steps=1",
         "data.workers=0", "data.group_size=4", "data.shuffle_buffer=4", "data.round_shards=1", "eval.max_samples=2",
         "eval.wer_samples=2", "eval.max_new_tokens=8", "log.wandb=off"]

PIPELINE = r"""
import json, sys
import numpy as np
from transformers import pipeline
pipe = pipeline("automatic-speech-recognition", model=sys.argv[1], trust_remote_code=True)
texts = [pipe(f, max_new_tokens=8)["text"] for f in sys.argv[3:]]
json.dump(texts, open(sys.argv[2], "w"))
# the features the pipeline's encoder makes of each clip, to compare with the stored ones
load_audio = sys.modules[type(pipe).__module__].load_audio
feats = [pipe.frontend.encode([pipe.frontend.prepare(load_audio(f))])[0] for f in sys.argv[3:]]
np.savez(sys.argv[2] + ".npz", *feats)
"""


def run(args: list, label: str, stats: dict, env: dict | None = None) -> str:
    """Run one stage as a child process; record its wall time and peak RSS (GiB); return its stderr+stdout."""
    t = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stats[label] = {"wall_s": time.perf_counter() - t, "peak_rss_gib": usage.ru_maxrss / 2**20}
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{out[-6000:]}")
    return out


def build(encoder: str, llm: str, root: Path, texts: list[str], stats: dict) -> tuple[Path, Path]:
    """Save the published encoder and LLM (random weights, bf16), each in a child process (its RSS measured)."""
    enc, lm = root / "models" / encoder, root / "models" / llm
    code = "import sys, json; from tatk.synthetic.published import build_encoder, build_llm; "
    if not (enc / "config.json").exists():
        run([sys.executable, "-c", code + "build_encoder(sys.argv[1], sys.argv[2])", encoder, enc], "build encoder", stats)
    if not (lm / "config.json").exists():
        (root / "texts.json").write_text(json.dumps(texts))
        run([sys.executable, "-c", code + "build_llm(sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])))", llm, lm,
             root / "texts.json"], "build LLM", stats)
    return enc, lm


def corpus(root: Path, clips: int) -> tuple[Path, list[str]]:
    """A LoquaciousSet-shaped espeak-ng corpus of ``clips`` utterances."""
    from tatk.synthetic.sentences import make_splits
    from tatk.synthetic.speech import write_corpus

    splits = make_splits(clips, 0, 0, seed=0)
    out = root / "corpus"
    if not out.exists():
        write_corpus(out, splits, layout="parquet", seed=0)
    return out, [t.lower() for t in splits["train"]]


def rehearse(family: str, root: Path, clips: int, window: str | None) -> dict:
    """One family through every stage; returns its figures and the eval / pipeline transcripts."""
    import torch  # noqa: F401  (fail here, not in a child, when the environment is broken)

    enc_name, llm_name, recipe = FAMILIES[family]
    stats: dict = {}
    data, texts = corpus(root, clips)
    enc, llm = build(enc_name, llm_name, root, texts, stats)
    work = root / family
    shards = work / "shards"
    tatk = [sys.executable, "-m", "tatk"]
    win = ["--window", window] if window else []
    common = ["--dataset", data, "--subset", "small", "--encoder", enc, "--batch-size", "4", *win]
    # one split, trained on and evaluated (a rehearsal checks that every stage runs, not what it learns), in float32:
    # the pipeline's transcripts and features must equal eval's and the stored ones (no fp16 rounding between)
    run(tatk + ["shard", *common, "--split", "train", "--out", shards, "--dtype", "float32"], "shard", stats)
    manifest = json.loads((shards / "manifest.json").read_text())
    models = [f"features.encoder={enc}", f"model.llm={llm}", f"data.train.0.path={shards}", "data.train.0.split=train",
              f"data.val.path={shards}", "data.val.split=train", f"run.out_dir={work}"]
    out1 = run(tatk + ["train", recipe, *sum([["--set", s] for s in QUICK + models + ["run.name=stage1"]], [])],
               "train stage 1", stats)
    stage2 = models + ["run.name=stage2", f"model.init_from={work / 'stage1' / 'checkpoints' / 'step-000002'}"]
    out2 = run(tatk + ["train", "recipes/stage2.toml", *sum([["--set", s] for s in QUICK + stage2 + _shape(recipe)], [])],
               "train stage 2", stats)
    run(tatk + ["eval", work / "stage2", "--data", shards, "--split", "train", "--max-new-tokens", "8", "--device", "cpu",
                "--out", work / "eval"], "eval (shards)", stats)
    run(tatk + ["export", work / "stage2", work / "export"], "export", stats)
    hyps = {json.loads(line)["id"]: json.loads(line)["hypothesis"] for line in (work / "eval" / "utterances.jsonl").read_text().splitlines()}
    ids, files = _clip_files(data, work)
    (work / "pipeline.py").write_text(PIPELINE)
    run([sys.executable, work / "pipeline.py", work / "export", work / "pipeline.json", *files], "pipeline", stats,
        env={"HF_MODULES_CACHE": str(work / "modules")})
    texts_out = json.loads((work / "pipeline.json").read_text())
    stored = _stored_features(shards)
    live = np.load(str(work / "pipeline.json") + ".npz")
    diff = max(float(np.abs(live[f"arr_{k}"] - stored[i]).max()) for k, i in enumerate(ids))
    return {"family": family, "encoder": enc_name, "llm": llm_name, "window": manifest["encoder"].get("window"),
            "feature_dim": manifest["encoder"]["dim"], "stages": stats, "stage1": _train_figures(out1, work / "stage1"),
            "stage2": _train_figures(out2, work / "stage2"), "eval_hyps": [hyps[i] for i in ids], "pipeline": texts_out,
            "feature_max_diff": diff,
            "encoder_params": _params(enc, enc_name)}


def _stored_features(shards: Path) -> dict:
    """{id: float32 features} of a shard folder's train split."""
    import io

    import webdataset as wds

    from tatk.shard.format import shard_paths

    return {json.loads(s["json"])["id"]: np.load(io.BytesIO(s["feats.npy"]))
            for s in wds.WebDataset(shard_paths(shards, "train"), shardshuffle=False, empty_check=False)}


def _shape(recipe: str) -> list[str]:
    """The stage-1 recipe's projector (stage 2 must load it) and feature dim, as --set overrides for stage2.toml."""
    import tomllib

    r = tomllib.loads((REPO / recipe).read_text())
    p = r["projector"]
    return [f"projector.kind={p['kind']}", f"projector.stack={p['stack']}", f"projector.hidden={p['hidden']}",
            f"features.dim={r['features']['dim']}", f"features.normalize={r['features']['normalize']}"]


def _clip_files(data: Path, work: Path) -> tuple[list[str], list[str]]:
    """The corpus's clips as files, in id order."""
    import pyarrow.parquet as pq

    folder = work / "clips"
    folder.mkdir(exist_ok=True)
    ids, files = [], []
    for f in sorted(data.rglob("*train*.parquet")):
        for row in pq.read_table(f, columns=["ID", "wav"]).to_pylist():
            path = folder / row["wav"]["path"]
            path.write_bytes(row["wav"]["bytes"])
            ids.append(row["ID"])
            files.append(str(path))
    return ids, files


def _train_figures(console: str, run_dir: Path) -> dict:
    """Trainable and LLM parameters from the run's first console line; LLM positions/s of its last step."""
    m = re.search(r"([\d,]+) trainable parameters, LLM ([\d,]+)", console)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speed = [r for r in records if "tokens_per_s" in r]
    return {"trainable": int(m.group(1).replace(",", "")), "llm": int(m.group(2).replace(",", "")),
            "positions_per_s": speed[-1]["tokens_per_s"], "samples_per_s": speed[-1]["samples_per_s"],
            "loss": speed[-1]["loss"]}


def _params(folder: Path, name: str) -> int:
    """Parameters of the encoder network (Whisper: its encoder only), counted from the safetensors headers."""
    from math import prod

    from safetensors import safe_open

    n = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            n += sum(prod(st.get_slice(k).get_shape()) for k in st.keys()
                     if not ("whisper" in name and ("decoder" in k or k.startswith("proj_out"))))
    return n


def table(r: dict) -> str:
    """One family's markdown table."""
    s1, s2 = r["stage1"], r["stage2"]
    total1 = r["encoder_params"] + s1["llm"] + s1["trainable"]
    lines = [f"**{r['family']}**: {r['encoder']} encoder ({r['encoder_params'] / 1e6:,.0f} M, {r['window']} windows, "
             f"{r['feature_dim']}-dim features) + {r['llm']} ({s1['llm'] / 1e6:,.0f} M)", "",
             "| stage | wall s | peak RSS GiB | notes |", "|---|---|---|---|"]
    notes = {"train stage 1": f"{s1['trainable']:,} trainable of {total1:,}; {s1['positions_per_s']:.0f} LLM positions/s",
             "train stage 2": f"{s2['trainable']:,} trainable (projector + LoRA); {s2['positions_per_s']:.0f} LLM positions/s"}
    for stage, v in r["stages"].items():
        lines.append(f"| {stage} | {v['wall_s']:.0f} | {v['peak_rss_gib']:.1f} | {notes.get(stage, '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="repeatable; default glmasr-qwen3")
    parser.add_argument("--clips", type=int, default=4, help="utterances (trained on, then evaluated and transcribed)")
    parser.add_argument("--window", choices=["30s", "fit"], help="GLM-ASR encoder window (default: the encoder's default)")
    parser.add_argument("--out", type=Path, help="work folder (kept); default a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the figures and transcripts here")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="tatk-rehearse-"))
    results = []
    for family in args.family or ["glmasr-qwen3"]:
        results.append(rehearse(family, root, args.clips, args.window))
        print(table(results[-1]) + "\n", flush=True)
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {args.clips} clips")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
