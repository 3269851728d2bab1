#!/usr/bin/env bash
# hfserve on an NVIDIA GPU, end to end, in one run:
# 1. the GPU is detected; tiny `hardware: auto` models, with no num_gpus set, reserve the share of
#    the GPU their estimated memory needs and run transformers on CUDA; chat and embeddings answer
#    correctly (bench/gpu_check.py);
# 2. serve_config.yaml, unchanged (two models, no num_gpus), deployed by `hfserve serve` on this
#    GPU: /ready turns 200, and each replica reserved a fraction of the GPU;
# 3. (cuda only) the transformers engine's continuous batching against the static loop it replaced,
#    and vLLM's engine where $PYTHON imports vLLM (PYTHON=<a venv with vllm> bash bench/gpu_check.sh),
#    SmolLM2 in bf16 at c=1 and c=32: tok/s and TTFT p50/p99 (bench/transformers_cb.py), written
#    to ${OUT:-/tmp}/transformers-cb-gpu.json.
#
#   bash bench/gpu_check.sh                  # on a GPU machine with the project and its models installed
#   EXPECT=openvino bash bench/gpu_check.sh  # the same script on a CPU machine (checks the script)
#
# Uses $PYTHON (default .venv/bin/python, else python3), $PORT (8000) and $READY_TIMEOUT_S (900);
# writes its log to ${OUT:-/tmp}/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
LOG=${OUT:-/tmp}/gpu_check.log
EXPECT=${EXPECT:-cuda}
PORT=${PORT:-8000}

default_config() {
  local state server code deadline=$((SECONDS + ${READY_TIMEOUT_S:-900}))
  state=$(mktemp -d /tmp/hfserve-gpu-check-XXXXXX)
  # One GPU, as on a one-GPU machine: the two models must share it.
  CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} HF_SERVER_STATE_DIR=$state HF_SERVER_PORT=$PORT \
    "$PYTHON" -m serve_app.cli serve --config serve_config.yaml >"$state/serve.log" 2>&1 &
  server=$!
  until code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/ready") && [ "$code" = 200 ]; do
    if ! kill -0 "$server" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "[FAIL] /ready is $code, not 200 (the end of hfserve serve's log follows)"; tail -n 40 "$state/serve.log"
      kill -INT "$server" 2>/dev/null; wait "$server" || true; return 1
    fi
    sleep 2
  done
  echo "[PASS] /ready 200 with serve_config.yaml unchanged"
  grep -E "planned for|ready in" "$state/serve.log" || true
  local ok=0
  KEY=$(cat "$state/admin.key") "$PYTHON" - "$PORT" "$EXPECT" <<'PY' || ok=$?
import json, os, sys, urllib.request

import ray
from ray.util.state import list_actors

port, expect = sys.argv[1:]
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {os.environ['KEY']}"})
cards = json.load(urllib.request.urlopen(request, timeout=30))["data"]
for card in cards:
    print(f"{card['id']}: platform {card.get('platform')}, device {card.get('device')}, backend {card.get('backend')}")
try:  # what Ray reserved for each replica: a report, not a check (/ready 200 on one GPU is the check)
    ray.init(address="auto", logging_level="ERROR")
    for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True):
        if actor.class_name.startswith("ServeReplica:") and actor.class_name.endswith(":ModelServer"):
            print(f"{actor.class_name} reserved GPU {actor.required_resources.get('GPU', 0)}")
except Exception as exc:  # noqa: BLE001
    print(f"(the replicas' reservations were not read: {exc})")
placed = all(card.get("platform") == expect for card in cards)
print(f"[{'PASS' if placed else 'FAIL'}] every model placed on {expect}")
sys.exit(0 if placed and cards else 1)
PY
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=index,memory.total,memory.used --format=csv; fi
  kill -INT "$server"; wait "$server" || true
  return "$ok"
}

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
  tiny=0; "$PYTHON" -m bench.gpu_check --expect "$EXPECT" || tiny=$?
  echo "== serve_config.yaml, unchanged, on this machine (port $PORT)"
  default=0; default_config || default=$?
  echo "== transformers generation: continuous batching against the static loop"
  cb=0
  if [ "$EXPECT" = cuda ]; then
    "$PYTHON" -m bench.transformers_cb --device cuda --dtype bfloat16 --concurrency 1,32 \
      --out "${OUT:-/tmp}/transformers-cb-gpu.json" || cb=$?
  else echo "(measured on cuda only)"; fi
  if [ "$tiny" = 0 ] && [ "$default" = 0 ] && [ "$cb" = 0 ]; then echo "[DONE] every check passed"
  else echo "[FAIL] bench/gpu_check.py: exit $tiny; serve_config.yaml: exit $default; transformers_cb: exit $cb"; exit 1; fi
} 2>&1 | tee "$LOG"
