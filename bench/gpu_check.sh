#!/usr/bin/env bash
# hfserve on an NVIDIA GPU, end to end, in one run: the GPU is detected, a `hardware: auto`
# model reserves num_gpus and runs transformers on CUDA, chat and embeddings answer correctly.
#
#   bash bench/gpu_check.sh                  # on a GPU machine with the project installed
#   EXPECT=openvino bash bench/gpu_check.sh  # the same script on a CPU machine (checks the script)
#
# Uses $PYTHON (default .venv/bin/python, else python3); writes its log to ${OUT:-/tmp}/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
LOG=${OUT:-/tmp}/gpu_check.log
EXPECT=${EXPECT:-cuda}
{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  "$PYTHON" -c "import torch, ray, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), '| ray', ray.__version__, '| transformers', transformers.__version__)"
  echo "== hfserve hardware"
  "$PYTHON" -m serve_app.cli hardware
  echo "== serving with hardware: auto (expect $EXPECT)"
  "$PYTHON" -m bench.gpu_check --expect "$EXPECT"
} 2>&1 | tee "$LOG"
