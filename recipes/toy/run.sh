#!/usr/bin/env bash
# bash recipes/toy/run.sh [WORK_DIR]    (default WORK_DIR: runs/toy; SMOKE=1 for a few-minute check)
#
# The toy byteifying recipe end to end on one CPU machine (about an hour on 2 cores):
#   Python 3.11 docs (Debian's python3.11-doc) -> BPE tokenizer -> `bolmo prepare` -> tiny OLMo 2
#   teacher (`stage: subword`) -> `bolmo byteify-init` -> stage 1 -> stage 2 -> bits per byte of
#   teacher and Bolmo on the 39 held-out library/[u-z]* pages -> the bundled default model and its
#   teacher (src/bolmo/assets/default_model, default_teacher).
# Every step is skipped when its output exists and every training run resumes from its last
# checkpoint, so an interrupted recipe continues where it stopped when started again.
#
# Environment: SMOKE=1 (tiny step counts, 3 eval pages, no install), THREADS (torch threads per
# process, default 1: spinning OpenMP threads slow down tenfold when anything else shares the
# cores), TEACHER_STEPS / STAGE1_STEPS / STAGE2_STEPS (defaults 1200 / 1000 / 500, the bundled
# model's: about 14 + 25 + 8 minutes on one core), PYDOC_SOURCES (an extracted
# .../html/_sources, skips the download), INSTALL=0|1 (copy the result to
# src/bolmo/assets/default_model and default_teacher; default 1, 0 with SMOKE), PYTHON (default: the repository's
# .venv/bin/python).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="$(mkdir -p "${1:-$ROOT/runs/toy}" && cd "${1:-$ROOT/runs/toy}" && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
THREADS="${THREADS:-1}"
export OMP_NUM_THREADS="$THREADS" TOKENIZERS_PARALLELISM=false

if [[ "${SMOKE:-0}" == 1 ]]; then
  TEACHER_STEPS="${TEACHER_STEPS:-40}"; STAGE1_STEPS="${STAGE1_STEPS:-30}"; STAGE2_STEPS="${STAGE2_STEPS:-30}"
  EVERY=10; EVAL=(--max-pages 3); INSTALL="${INSTALL:-0}"
else
  TEACHER_STEPS="${TEACHER_STEPS:-1200}"; STAGE1_STEPS="${STAGE1_STEPS:-1000}"; STAGE2_STEPS="${STAGE2_STEPS:-500}"
  EVERY=25; EVAL=(); INSTALL="${INSTALL:-1}"
fi
D_MODEL=128; LAYERS=4; HEADS=4; FFN=512; VOCAB=4096; DECODER_LAYERS=4; LOCAL_HEADS=4; LOCAL_FFN=176
COMMON=("threads=$THREADS" "logging.every=$EVERY" "data.dir=$WORK/data")

step() { echo; echo "=== $* ($(date +%T))"; }
bolmo() { "$PY" -m bolmo.cli "$@"; }

step "1. Python 3.11 documentation sources"
SOURCES="${PYDOC_SOURCES:-$WORK/pydoc/usr/share/doc/python3.11/html/_sources}"
if [[ ! -d "$SOURCES" ]]; then
  (cd "$WORK" && apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb pydoc)
fi
[[ -d "$WORK/corpus" ]] || "$PY" "$HERE/toy.py" split "$SOURCES" "$WORK/corpus"

step "2. BPE tokenizer ($VOCAB entries) and prepared data"
[[ -f "$WORK/tokenizer/tokenizer.json" ]] || "$PY" "$HERE/toy.py" tokenizer "$WORK/corpus/train" "$WORK/tokenizer" --vocab-size "$VOCAB"
[[ -f "$WORK/data/meta.json" ]] || bolmo prepare "$WORK/corpus/train" --tokenizer "$WORK/tokenizer" --out "$WORK/data" --no-progress

step "3. subword teacher: d $D_MODEL, $LAYERS layers, $TEACHER_STEPS steps"
[[ -f "$WORK/teacher_init/config.json" ]] || "$PY" "$HERE/toy.py" teacher-init "$WORK/tokenizer" "$WORK/teacher_init" \
  --hidden-size "$D_MODEL" --layers "$LAYERS" --heads "$HEADS" --intermediate-size "$FFN"
[[ -f "$WORK/teacher/hf/config.json" ]] || bolmo train "$HERE/teacher.yaml" "${COMMON[@]}" run_dir="$WORK/teacher" \
  model.path="$WORK/teacher_init" schedule.steps="$TEACHER_STEPS"

step "4. byteify-init: 1 encoder + $DECODER_LAYERS decoder mLSTM layers"
[[ -f "$WORK/bolmo_init/config.json" ]] || bolmo byteify-init --teacher "$WORK/teacher/hf" --out "$WORK/bolmo_init" \
  --decoder-layers "$DECODER_LAYERS" --local-heads "$LOCAL_HEADS" --local-intermediate-size "$LOCAL_FFN" \
  --final-norm teacher  # how the bundled model was made (the defaults are 256 and 1)

step "5. stage 1: $STAGE1_STEPS steps"
[[ -f "$WORK/stage1/hf/config.json" ]] || bolmo train "$HERE/stage1.yaml" "${COMMON[@]}" run_dir="$WORK/stage1" \
  model.path="$WORK/bolmo_init" model.teacher="$WORK/teacher/hf" schedule.steps="$STAGE1_STEPS"

step "6. stage 2: $STAGE2_STEPS steps"
[[ -f "$WORK/stage2/hf/config.json" ]] || bolmo train "$HERE/stage2.yaml" "${COMMON[@]}" run_dir="$WORK/stage2" \
  model.path="$WORK/stage1/hf" schedule.steps="$STAGE2_STEPS"

step "7. bits per byte on the held-out pages"
"$PY" "$HERE/toy.py" evaluate --teacher "$WORK/teacher/hf" --bolmo "$WORK/stage2/hf" --heldout "$WORK/corpus/heldout" \
  --out "$WORK/eval.json" "${EVAL[@]}"

step "8. package"
cat > "$WORK/recipe.txt" <<INFO
Teacher: OLMo 2 architecture, d $D_MODEL, $LAYERS layers, $HEADS heads, MLP $FFN, byte-level BPE of $VOCAB entries,
$TEACHER_STEPS steps of 16 x 128 tokens (recipes/toy/teacher.yaml). Bolmo: the teacher's blocks, local d $D_MODEL,
1 encoder + $DECODER_LAYERS decoder mLSTM layers ($LOCAL_HEADS heads); stage 1 $STAGE1_STEPS steps and stage 2
$STAGE2_STEPS steps of 8 instances x 576 byte slots (recipes/toy/stage1.yaml, stage2.yaml).
INFO
"$PY" "$HERE/toy.py" package --model "$WORK/stage2/hf" --eval "$WORK/eval.json" --recipe "$WORK/recipe.txt" \
  --out "$WORK/model" --context 576  # trained on 576-byte sequences (stage1/2.yaml seq_len)
"$PY" "$HERE/toy.py" package --model "$WORK/teacher/hf" --eval "$WORK/eval.json" --recipe "$WORK/recipe.txt" \
  --out "$WORK/teacher_model" --card TEACHER_CARD.md --context 128  # 128 tokens (teacher.yaml)
if [[ "$INSTALL" == 1 ]]; then
  mkdir -p "$ROOT/src/bolmo/assets"
  for pair in model:default_model teacher_model:default_teacher; do
    rm -rf "$ROOT/src/bolmo/assets/${pair#*:}"
    cp -r "$WORK/${pair%%:*}" "$ROOT/src/bolmo/assets/${pair#*:}"
    echo "installed: $ROOT/src/bolmo/assets/${pair#*:}"
  done
fi
cat "$WORK/eval.json"
