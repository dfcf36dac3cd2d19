#!/usr/bin/env bash
# Provisions a GPU instance for tts_lib: bash setup.sh
# Safe to run again: each step skips what is already done. Logs to setup.log.
#
# This build does steps 1-3 (environment, packages, Jupyter kernel). Downloading the base model
# and the default dataset is not implemented yet; the bundled data/demo is what runs today.
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
LOG="$ROOT/setup.log"
exec > >(tee -a "$LOG") 2>&1

step() { printf '\n== [%s] %s ==\n' "$1" "$2"; }

retry() {  # retry with backoff: network steps fail now and then on fresh instances
  local n=0
  until "$@"; do
    n=$((n + 1))
    if [ "$n" -ge 4 ]; then
      echo "failed after $n tries: $*"
      return 1
    fi
    echo "retrying in $((n * 10)) s: $*"
    sleep $((n * 10))
  done
}

step 1 "Python environment"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" --version

step 2 "PyTorch and packages"
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "torch already installed: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
  retry "$VENV/bin/pip" install "torch>=2.4,<3"  # PyPI's Linux wheels are CUDA builds
else
  echo "no NVIDIA GPU found: installing the CPU build"
  retry "$VENV/bin/pip" install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    || retry "$VENV/bin/pip" install "torch==2.13.0"
fi
retry "$VENV/bin/pip" install -r requirements.txt
"$VENV/bin/pip" install --no-deps -e .

step 3 "Jupyter kernel"
KERNEL_DIR="$HOME/.local/share/jupyter/kernels/tts_lib"
"$VENV/bin/python" -m ipykernel install --user --name tts_lib --display-name "Python (tts_lib)"
# Keep downloads on the instance's data disk, not in the home folder of the image.
"$VENV/bin/python" - "$KERNEL_DIR/kernel.json" "$ROOT" <<'PY'
import json, sys
path, root = sys.argv[1], sys.argv[2]
spec = json.load(open(path))
spec["env"] = {"HF_HOME": f"{root}/.cache/huggingface", "TTS_LIB_CACHE": f"{root}/.cache/tts_lib"}
json.dump(spec, open(path, "w"), indent=1)
PY

step 4 "Check"
"$VENV/bin/python" -m tts_lib validate data/demo --no-decode > /dev/null && echo "data/demo validates"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
else
  echo "no GPU: the CPU demo runs, training real models needs a GPU"
fi
df -h "$ROOT" | tail -1
touch "$ROOT/.setup-ready"
echo "ready: open notebooks/finetune.ipynb with the 'Python (tts_lib)' kernel"
