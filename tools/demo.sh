#!/usr/bin/env bash
# The main job, end to end, on a fresh machine (sets itself up first; no GPU, nothing downloaded):
#   1. synthesize train/dev/test speech with espeak-ng in LoquaciousSet's parquet schema ($DIR/corpus), and two
#      held-out test splits: test_order (word orders the grammar never makes) and test_noisy (unseen voices, noise);
#      training teaches listening: half its sentences in scrambled word order, 26 espeak-ng voices and 26 drawn at
#      random, noise on half the clips;
#   2. build a tiny random GLM-ASR-style encoder and a tiny random Qwen3-style decoder (4 layers x 192), whose BPE
#      tokenizer is trained on the training text (whole words become tokens), with save_pretrained
#      ($DIR/encoder, $DIR/llm);
#   3. `tatk shard` every split through the encoder ($SHARDS), each clip padded to its next whole second
#      (--window fit: a random encoder has no 30-s habit to keep, and it is ~3x less encoder work);
#   4. `accelerate launch tatk train recipes/demo.toml` (projector + whole decoder) → $DIR/asr;
#   5. `tatk eval` on the three held-out test splits, `tatk export`, `tatk report` → $DIR/asr/report/.
# Sizes come from the environment (defaults: the full demo; the CI test runs a small one):
#   DEMO_TRAIN DEMO_DEV DEMO_TEST (utterances), DEMO_STEPS (training steps; default: the recipe's),
#   DEMO_SEED, DEMO_DIR (default runs/demo), DEMO_SHARDS (default shards/demo-glmasr),
#   DEMO_LISTEN=0 (train on grammar sentences from 12 voices, no noise: the corpus without --listen),
#   DEMO_SET (extra recipe overrides, space-separated section.key=value, e.g. "data.max_tokens=1024").
# Re-running with the same sizes reuses the corpus, models and finished shards and retrains from scratch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. tools/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
DIR=${DEMO_DIR:-runs/demo}
SHARDS=${DEMO_SHARDS:-shards/demo-glmasr}
TRAIN=${DEMO_TRAIN:-20000} DEV=${DEMO_DEV:-100} TEST=${DEMO_TEST:-200} SEED=${DEMO_SEED:-0}
RUN=$DIR/asr
TIMES=()
stage() {  # stage NAME COMMAND...: run it, note its wall time
    local name=$1 start=$SECONDS
    shift
    echo "== $name: $*"
    "$@"
    TIMES+=("$name $((SECONDS - start))")
}

# A corpus of other sizes (or seed, or an older demo's corpus or encoder) invalidates everything built from it.
LISTEN=${DEMO_LISTEN:-1}
ENCODER_WIDTH=128  # recipes/demo.toml's features.dim
# 4 layers x 192: 1.4x the step rate of 256 wide; more clips and steps in the same time listen better (docs/main-job.md)
DECODER_WIDTH=192
# The listening corpus: 26 voices drawn at random besides espeak-ng's 26, noise on half the clips at 5-25 dB SNR
# (unseen voices in noise: 7.9 % WER in the latest fresh run, 25.6 % with espeak-ng's voices alone and noise on 30 %
# at 10-30 dB; docs/main-job.md).
listening=(--listen --random-voices 26 --train-noise 0.5 --train-snr 5 25)
[ "$LISTEN" = 1 ] || listening=()
sizes="train=$TRAIN dev=$DEV test=$TEST seed=$SEED held-out=1 ${listening[*]-} tokenizer=bpe2000 encoder=2x$ENCODER_WIDTH decoder=4x$DECODER_WIDTH"
if [ "$(cat "$DIR/corpus/.sizes" 2>/dev/null)" != "$sizes" ]; then
    rm -rf "$DIR/corpus" "$DIR/encoder" "$DIR/llm" "$SHARDS"
    stage synthesize python tools/synth_corpus.py "$DIR/corpus" --layout parquet \
        --train "$TRAIN" --dev "$DEV" --test "$TEST" --seed "$SEED" --held-out ${listening[@]+"${listening[@]}"}
    echo "$sizes" > "$DIR/corpus/.sizes"
fi
[ -f "$DIR/encoder/config.json" ] || stage encoder python -m tatk.synthetic.tiny glmasr "$DIR/encoder" --hidden "$ENCODER_WIDTH"
[ -f "$DIR/llm/config.json" ] || stage decoder python -m tatk.synthetic.tinyllm "$DIR/llm" --corpus "$DIR/corpus" \
    --tokenizer bpe --bpe-vocab 2000 --prompt-words --hidden "$DECODER_WIDTH" --layers 4
# All five splits in one command (one start-up). The train split (20 units at the default size) is read and
# turned into log-mel by one worker process per core: the same tars as with one worker in 0.91x the time on
# 2 cores (two runs each, interleaved: 78 s against 86); a small split is one unit, done by one worker.
stage shard tatk shard --dataset "$DIR/corpus" --subset small --split train --split dev --split test \
    --split test_order --split test_noisy --encoder "$DIR/encoder" --out "$SHARDS" --window fit --workers "$(nproc)"

# The recipe names runs/demo and shards/demo-glmasr; other folders or sizes are passed as overrides.
overrides=()
if [ "$DIR" != runs/demo ] || [ "$SHARDS" != shards/demo-glmasr ]; then
    overrides+=(--set "run.out_dir=$DIR" --set "features.encoder=$DIR/encoder" --set "model.llm=$DIR/llm"
                --set "data.train.0.path=$SHARDS" --set "data.val.path=$SHARDS")
fi
[ -z "${DEMO_STEPS:-}" ] || overrides+=(--set "train.steps=$DEMO_STEPS")
# The recipe trains under bf16 autocast, which only CPUs with bf16 instructions run faster than fp32.
grep -qwE "avx512_bf16|amx_bf16" /proc/cpuinfo 2>/dev/null || overrides+=(--set "train.precision=fp32")
for item in ${DEMO_SET:-}; do overrides+=(--set "$item"); done
rm -rf "$RUN"
stage train accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
    tatk train recipes/demo.toml ${overrides[@]+"${overrides[@]}"}
# The three test splits in one command (one model load), each into $RUN/eval-<shard folder name>-<split>;
# tatk report finds all three there by itself (in the order evaluated), and the in-grammar one goes in the model card.
stage eval tatk eval "$RUN" --data "$SHARDS" --split test --split test_order --split test_noisy --out "$RUN"
stage export tatk export "$RUN" "$DIR/export" --eval "$RUN"/eval-*-test/summary.json
stage report tatk report "$RUN"

printf '%s\n' "${TIMES[@]}" | awk '{printf "%-16s %5d s\n", $1, $2; t += $2} END {printf "%-16s %5d s\n", "total", t}' \
    | tee "$RUN/report/timings.txt"
echo "report: $RUN/report/report.md (training.png, eval-summary.json)   exported model: $DIR/export"
