#!/usr/bin/env bash
# The main job, end to end on an embedded default, on a fresh machine (sets itself up first):
#   1. synthesize a small espeak-ng corpus in LoquaciousSet's parquet schema (runs/demo/corpus);
#   2. build a tiny random GLM-ASR-style encoder and Qwen3-style LLM with save_pretrained;
#   3. shard train/dev/test through the encoder with `tatk shard` (shards/demo-glmasr);
#   4. train the projector with `accelerate launch tatk train recipes/tiny.toml`.
# Re-running resumes sharding (finished shards are kept) and starts a fresh training run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. tools/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f runs/demo/corpus/README.md ] || python tools/synth_corpus.py runs/demo/corpus --layout parquet --train 400 --dev 40 --test 40 --seed 0
[ -f runs/demo/encoder/config.json ] || python -m tatk.tiny glmasr runs/demo/encoder
[ -f runs/demo/llm/config.json ] || python -m tatk.tinyllm runs/demo/llm --corpus runs/demo/corpus
for split in train dev test; do
    tatk shard --dataset runs/demo/corpus --subset small --split "$split" --encoder runs/demo/encoder --out shards/demo-glmasr
done
rm -rf runs/demo/tiny
accelerate launch tatk train recipes/tiny.toml
echo "shards: shards/demo-glmasr   run: runs/demo/tiny"
