#!/usr/bin/env bash
# Boot Triton (CPU) on the generated model repository, wait for both models, then
# serve the FastAPI app. If either process dies, stop the other and exit non-zero
# (an orchestrator restarts the container); SIGTERM/SIGINT stop both cleanly,
# the API first so in-flight requests finish while Triton still answers.
#
# Environment: FASTAPI_PORT (3000), FASTAPI_HOST (0.0.0.0), TRITON_HTTP_PORT (8000),
# TRITON_GRPC_PORT (8001), TRITON_METRICS_PORT (8002), TRITON_REPO (model_repository),
# TRITON_READY_TIMEOUT_S (120), TRITON_URL (host:port of an external Triton: boot none),
# ANTISPOOF_FROM (a converted anti-spoofing folder: `triton_service.py serve` installs it before
# Triton starts), PYTHON (python).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
export FASTAPI_PORT=${FASTAPI_PORT:-3000}
FASTAPI_HOST=${FASTAPI_HOST:-0.0.0.0}
export TRITON_HTTP_PORT=${TRITON_HTTP_PORT:-8000}
export TRITON_GRPC_PORT=${TRITON_GRPC_PORT:-8001}
export TRITON_METRICS_PORT=${TRITON_METRICS_PORT:-8002}
export TRITON_REPO=${TRITON_REPO:-model_repository}
export TRITON_READY_TIMEOUT_S=${TRITON_READY_TIMEOUT_S:-120}

# glibc returns freed blocks above its mmap threshold to the kernel at once, so every request's
# multi-MB buffers page-fault in afresh; keeping them in the heap saves a fifth of the API's CPU
# per image (same values as triton_service.MALLOC_TUNING, which Triton gets).
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-67108864}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-268435456}

triton_pid=""
api_pid=""
stopping=0

log() { echo "[start.sh] $*" >&2; }

stop_all() {
  # API first: uvicorn drains in-flight requests on SIGTERM while Triton still serves them.
  if [ -n "$api_pid" ] && kill -0 "$api_pid" 2>/dev/null; then
    kill -TERM "$api_pid" 2>/dev/null
    wait "$api_pid" 2>/dev/null
  fi
  if [ -n "$triton_pid" ] && kill -0 "$triton_pid" 2>/dev/null; then
    kill -TERM "$triton_pid" 2>/dev/null
    wait "$triton_pid" 2>/dev/null
  fi
}

on_signal() {
  stopping=1
  log "stopping on signal"
  stop_all
  exit 0
}
trap on_signal TERM INT

if [ -z "${TRITON_URL:-}" ]; then
  if [ ! -f "$TRITON_REPO/model_info.json" ]; then
    log "error: no model repository at $TRITON_REPO: run 'python extract_insightface_models.py --output-dir $TRITON_REPO' (make run does)"
    exit 1
  fi
  # `serve` installs the anti-spoofing model first when ANTISPOOF_FROM names a folder.
  "$PYTHON" triton_service.py serve --repo "$TRITON_REPO" &
  triton_pid=$!
  # In the background so that a signal interrupts the wait at once.
  "$PYTHON" triton_service.py wait-ready --watch-pid "$triton_pid" &
  if ! wait $!; then
    log "error: Triton did not become ready; stopping"
    stop_all
    exit 1
  fi
else
  log "using the external Triton at $TRITON_URL"
fi

"$PYTHON" -m uvicorn app:create_app --factory --no-proxy-headers --host "$FASTAPI_HOST" --port "$FASTAPI_PORT" &
api_pid=$!
log "API on http://$FASTAPI_HOST:$FASTAPI_PORT (Swagger UI at /docs)"

# Whichever child exits first ends the container.
wait -n
status=$?
[ "$stopping" = 1 ] && exit 0
if [ -n "$triton_pid" ] && ! kill -0 "$triton_pid" 2>/dev/null; then
  log "error: tritonserver exited (status $status); stopping the API"
else
  log "error: the API exited (status $status); stopping Triton"
fi
stop_all
exit $(( status == 0 ? 1 : status ))
