#!/usr/bin/env bash
# Provisions a GPU instance for tts_lib: bash setup.sh [--demo] [--help]
# Safe to run again: each step skips what is already done. Logs to setup.log.
#
# Steps: 1 Python environment, 2 PyTorch and packages, 3 Jupyter kernel, 4 base model, 5 dataset, 6 check.
# --demo, or no network, or no access to the gated base model: the tiny random `tiny-demo` model and the
# bundled data/demo (everything runs, nothing it makes is speech).
#
# Settings (Brev launch parameters arrive as environment variables; all optional):
#   HF_TOKEN          Hugging Face read token for the gated base model. Read by huggingface_hub from the
#                     environment only: this script never prints it, logs it or writes it to a file.
#   TRAINING_MODE     quick_lora (default) | two_phase | full: step 6 checks VRAM and disk against its need
#   BASE_MODEL        auto or openaudio-s1-mini (default: download fishaudio/openaudio-s1-mini, demo if refused)
#                     | tiny-demo (the random demo model) | a checkpoint folder on this machine, used as it is
#   MODEL_REVISION    commit or branch of S1-mini on the hub (default below)
#   DATASET           hub dataset repository (default google/fleurs), "demo" for data/demo, or a dataset folder
#                     or file on this machine, used as it is
#   DATASET_CONFIG    FLEURS language folder (default fi_fi; empty for other datasets)
#   DATASET_REVISION  commit or branch of DATASET (default below)
# For tests and quick re-runs:
#   VENV=PATH             the virtual environment (default .venv)
#   SETUP_SKIP_INSTALL=1  use VENV as it is: no venv creation, no pip (steps 1-2 only check)
#   RETRY_DELAY=SECONDS   first backoff of network retries (default 10)
#   HF_HUB_OFFLINE=1      no network: downloads fail at once and demo mode is used
set -euo pipefail

# Pinned revisions. NOT verified commit hashes: the hub could not be reached when this was written, so
# these follow "main". Replace each with the 40-hex commit from the repository's "commits" page on
# huggingface.co to pin exactly what is downloaded.
MODEL_REVISION_UNPINNED=main
DATASET_REVISION_UNPINNED=main

# FLEURS (google/fleurs, CC-BY-4.0: sharing and adapting allowed, with attribution), Finnish: read speech
# of many speakers, 16 kHz. Converted by tts_lib.launch.download to JSONL that `ingest` reads.
BASE_MODEL=${BASE_MODEL:-auto}
MODEL_REVISION=${MODEL_REVISION:-$MODEL_REVISION_UNPINNED}
DATASET=${DATASET:-google/fleurs}
DATASET_CONFIG=${DATASET_CONFIG-fi_fi}
DATASET_REVISION=${DATASET_REVISION:-$DATASET_REVISION_UNPINNED}
TRAINING_MODE=${TRAINING_MODE:-quick_lora}
RETRY_DELAY=${RETRY_DELAY:-10}
SETUP_SKIP_INSTALL=${SETUP_SKIP_INSTALL:-0}

DEMO=0
for arg in "$@"; do
  case "$arg" in
    --demo) DEMO=1 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (use --demo or --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")"
ROOT=$(pwd)
# The base-model names of the notebooks and the CLI (README: "Base-model names"), checked before anything is
# installed; a relative folder is taken from this repository.
# (tts_lib.models.published_models is the list; tests/test_setup_sh.py checks this copy agrees with it.)
MODEL_REPO=""
MODEL_NAME=""
case "$BASE_MODEL" in
  auto|openaudio-s1-mini|fishaudio/openaudio-s1-mini) MODEL_REPO=fishaudio/openaudio-s1-mini MODEL_NAME=openaudio-s1-mini ;;
  voxcpm2|openbmb/VoxCPM2) MODEL_REPO=openbmb/VoxCPM2 MODEL_NAME=voxcpm2 ;;
  tiny-demo|demo) DEMO=1 ;;
  *)
    if [ ! -f "$BASE_MODEL/config.json" ]; then
      echo "BASE_MODEL must be auto, openaudio-s1-mini, voxcpm2, tiny-demo or a checkpoint folder with config.json;" \
        "found '$BASE_MODEL'" >&2
      exit 2
    fi ;;  # a checkpoint folder on this machine: nothing to download
esac
VENV=${VENV:-$ROOT/.venv}
PY="$VENV/bin/python"
LOG="$ROOT/setup.log"
READY="$ROOT/.setup-ready"
exec > >(tee -a "$LOG") 2>&1
rm -f "$READY"  # written again at the end of a run that succeeds

step() { printf '\n== [%s] %s ==\n' "$1" "$2"; }

retry() {  # retry with backoff: network steps fail now and then on fresh instances
  local n=0
  until "$@"; do
    n=$((n + 1))
    if [ "$n" -ge 4 ]; then
      echo "failed after $n tries: $*"
      return 1
    fi
    echo "retrying in $((n * RETRY_DELAY)) s: $*"
    sleep $((n * RETRY_DELAY))
  done
}

# Runs `python -m tts_lib.launch.download ARGS`; sets DL_RC to its exit status: 0 done, 1 error, 2 gated (needs a
# token or the licence), 3 offline. Retries errors and lost connections with backoff, never a refusal.
download() {
  local n=0
  while true; do
    DL_RC=0
    "$PY" -m tts_lib.launch.download "$@" || DL_RC=$?
    case "$DL_RC" in
      0|2) return 0 ;;
      3) if [ "${HF_HUB_OFFLINE:-0}" != "0" ]; then return 0; fi ;;
    esac
    n=$((n + 1))
    if [ "$n" -ge 4 ]; then
      return 0
    fi
    echo "retrying in $((n * RETRY_DELAY)) s"
    sleep $((n * RETRY_DELAY))
  done
}

step 1 "Python environment"
if [ "$SETUP_SKIP_INSTALL" = "1" ]; then
  echo "SETUP_SKIP_INSTALL=1: using $VENV as it is"
elif [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
"$PY" --version

step 2 "PyTorch and packages"
if [ "$SETUP_SKIP_INSTALL" = "1" ]; then
  "$PY" -c "import torch, huggingface_hub, tts_lib" && echo "torch, huggingface_hub and tts_lib import"
else
  if "$PY" -c "import torch" 2>/dev/null; then
    echo "torch already installed: $("$PY" -c 'import torch; print(torch.__version__)')"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    retry "$VENV/bin/pip" install "torch>=2.4,<3"  # PyPI's Linux wheels are CUDA builds
  else
    echo "no NVIDIA GPU found: installing the CPU build"
    # One quick try at PyTorch's CPU index (small wheels); a machine that cannot reach it gets torch from the
    # default index at once instead of minutes of retries and pip's unrelated "no matching distribution" errors.
    if ! "$VENV/bin/pip" install -q --timeout 5 --retries 0 "torch==2.13.0" \
        --index-url https://download.pytorch.org/whl/cpu >/dev/null 2>&1; then
      echo "note: PyTorch's CPU index is not reachable from here: installing torch from the default index"
      retry "$VENV/bin/pip" install "torch==2.13.0"
    fi
  fi
  retry "$VENV/bin/pip" install -r requirements.txt
  "$VENV/bin/pip" install --no-deps -e .
fi

step 3 "Jupyter kernel and notebook git filter"
# --user: the instance's JupyterLab runs from another environment. The kernel keeps downloads on the instance's
# data disk, not in the image's home folder; paths only: the token reaches the notebook through the environment
# Jupyter was started with, never through a file. The git filter keeps saved notebook outputs out of commits.
"$PY" -m tts_lib notebook-setup --user \
  --env "HF_HOME=$ROOT/.cache/huggingface" --env "TTS_LIB_CACHE=$ROOT/.cache/tts_lib"
export HF_HOME="$ROOT/.cache/huggingface" TTS_LIB_CACHE="$ROOT/.cache/tts_lib"

step 4 "Base model"
REASON=""
if [ "$DEMO" = "1" ]; then
  REASON="demo requested"
elif [ -z "$MODEL_REPO" ]; then
  MODEL_DIR=$(cd "$BASE_MODEL" && pwd)
  echo "base model: $MODEL_DIR (a folder on this machine, used as it is)"
else
  MODEL_DIR="checkpoints/$MODEL_NAME"
  if [ -z "${HF_TOKEN:-}" ]; then
    echo "HF_TOKEN is not set: trying without a token (gated models will refuse)"
  else
    echo "HF_TOKEN is set (not shown)"
  fi
  download model --repo "$MODEL_REPO" --revision "$MODEL_REVISION" --dest "$MODEL_DIR"
  if [ "$DL_RC" = "2" ] && [ "$BASE_MODEL" = "auto" ]; then
    # The default model is gated and this token has no access: a real model beats the random demo.
    echo "OpenAudio S1-mini is not available with this token: downloading VoxCPM2 instead (openbmb/VoxCPM2," \
      "Apache-2.0, no token needed; tts_lib's second model family, in progress: docs/voxcpm.md)."
    echo "For S1-mini: accept its licence as above, then BASE_MODEL=openaudio-s1-mini bash setup.sh"
    MODEL_REPO=openbmb/VoxCPM2 MODEL_NAME=voxcpm2 MODEL_DIR=checkpoints/voxcpm2
    download model --repo "$MODEL_REPO" --revision main --dest "$MODEL_DIR"
  fi
  case "$DL_RC" in
    0) echo "base model: $MODEL_DIR ($MODEL_REPO)" ;;
    2) DEMO=1; REASON="no access to $MODEL_REPO (see the steps above)" ;;
    3) DEMO=1; REASON="offline" ;;
    *) DEMO=1; REASON="the download of $MODEL_REPO failed (see above)" ;;
  esac
fi
if [ "$DEMO" = "1" ]; then
  echo "demo mode ($REASON): the random tiny-demo model; everything runs, nothing it makes is speech"
  MODEL_DIR="checkpoints/tiny-demo"
  if [ -f "$MODEL_DIR/config.json" ]; then
    echo "$MODEL_DIR already there"
  else
    "$PY" -m tts_lib make-tiny-model "$MODEL_DIR"
  fi
fi

step 5 "Dataset"
if [ "$DEMO" = "1" ] || [ "$DATASET" = "demo" ]; then
  DATA_DIR="data/demo"
  echo "using the bundled $DATA_DIR"
elif [ -e "$DATASET" ]; then
  DATA_DIR=$(cd "$(dirname "$DATASET")" && pwd)/$(basename "$DATASET")
  echo "dataset: $DATA_DIR (on this machine, used as it is)"
else
  DATA_DIR="data/${DATASET##*/}${DATASET_CONFIG:+_$DATASET_CONFIG}"
  download dataset --repo "$DATASET" --revision "$DATASET_REVISION" --config "$DATASET_CONFIG" --dest "$DATA_DIR"
  if [ "$DL_RC" != "0" ]; then
    echo "dataset $DATASET not downloaded: using the bundled data/demo (rerun bash setup.sh to try again)"
    DATA_DIR="data/demo"
  fi
fi

# The quality metrics' models (Whisper for intelligibility, WavLM for speaker similarity) are only worth
# their 1 GB on a GPU instance; without them the notebook's metrics section says "not available".
if [ "$DEMO" = "0" ] && command -v nvidia-smi >/dev/null 2>&1; then
  download metric-models
  [ "$DL_RC" = "0" ] || echo "metric models not downloaded: the quality metrics will report 'not available'"
fi

step 6 "Check"
# GPU memory (GiB) and disk each mode needs, as in launchable.yaml: the memory plan's figures for S1-mini at its
# default max_tokens 4096 (tts_lib/training/memory_needs.json; traced, not measured). gradient_checkpointing or a lower max_tokens needs less.
case "$TRAINING_MODE" in
  quick_lora) NEED_VRAM_GB=22; NEED_DISK_GB=60 ;;
  two_phase) NEED_VRAM_GB=36; NEED_DISK_GB=100 ;;
  full) NEED_VRAM_GB=36; NEED_DISK_GB=100 ;;
  *) echo "TRAINING_MODE must be quick_lora, two_phase or full, found '$TRAINING_MODE'"; exit 2 ;;
esac
# VoxCPM2's own plan, at its default max_tokens 1024 (memory_needs.json); its full checkpoints are 2.3 B parameters
# x 12 bytes (fp32 weights and two Adam moments), about 28 GB each, four of them kept (3 resumable + the best)
if [ "$MODEL_NAME" = "voxcpm2" ]; then
  case "$TRAINING_MODE" in
    quick_lora) NEED_VRAM_GB=16 ;;
    two_phase) NEED_VRAM_GB=63; NEED_DISK_GB=150 ;;
    full) NEED_VRAM_GB=63; NEED_DISK_GB=150 ;;
  esac
fi
if [ "$DEMO" = "1" ]; then
  NEED_DISK_GB=5  # the tiny model and data/demo
fi
WARNINGS=0
if "$PY" -m tts_lib validate "$DATA_DIR" --no-decode > /dev/null; then
  echo "$DATA_DIR validates"
else
  echo "WARNING: $DATA_DIR has errors: see python -m tts_lib validate $DATA_DIR"
  WARNINGS=$((WARNINGS + 1))
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  VRAM_MB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | tr -dc '0-9')
  VRAM_GB=$((${VRAM_MB:-0} / 1024))
  if [ "$VRAM_GB" -lt "$NEED_VRAM_GB" ]; then
    echo "WARNING: $TRAINING_MODE needs about $NEED_VRAM_GB GB of GPU memory, this GPU has $VRAM_GB GB:"
    echo "  choose quick_lora, lower max_tokens, set train.gradient_checkpointing, or a larger GPU (launchable.yaml)"
    WARNINGS=$((WARNINGS + 1))
  else
    echo "GPU memory: $VRAM_GB GB, $TRAINING_MODE needs about $NEED_VRAM_GB GB"
  fi
else
  echo "no GPU: the CPU demo runs, training real models needs a GPU ($TRAINING_MODE: about $NEED_VRAM_GB GB)"
fi
FREE_GB=$(df -Pk "$ROOT" | awk 'NR == 2 {print int($4 / 1048576)}')
if [ "$FREE_GB" -lt "$NEED_DISK_GB" ]; then
  echo "WARNING: $FREE_GB GB free on $(df -P "$ROOT" | awk 'NR == 2 {print $6}'), $TRAINING_MODE needs about $NEED_DISK_GB GB"
  WARNINGS=$((WARNINGS + 1))
else
  echo "disk: $FREE_GB GB free, $TRAINING_MODE needs about $NEED_DISK_GB GB"
fi
# The ready marker: what the notebook should use. Settings only, never the token.
cat > "$READY" <<EOF
demo=$DEMO
reason=$REASON
training_mode=$TRAINING_MODE
base_model_dir=$MODEL_DIR
data_dir=$DATA_DIR
warnings=$WARNINGS
EOF
if [ "$DEMO" = "1" ]; then
  echo "ready (demo mode: $REASON): open notebooks/finetune.ipynb with the 'Python (tts_lib)' kernel"
else
  echo "ready: open notebooks/finetune.ipynb with the 'Python (tts_lib)' kernel"
fi
echo "base model: $MODEL_DIR, data: $DATA_DIR (written to .setup-ready)"
