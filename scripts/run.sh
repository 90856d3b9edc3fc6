#!/usr/bin/env bash
# `make run`: start `skiff dev` (a scheduler and a node in one process, data in
# ./.skiff), deploy the worker example with two replicas, show them running and
# their logs, print the dashboard's link, then stay in the foreground until Ctrl-C.
# SKIFF_DATA_DIR and SKIFF_LISTEN (skiff dev's own variables) move it elsewhere:
# the browser test (tests/e2e/observability.rs) runs this script on a free port
# in a temp dir and opens the link it prints.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
SKIFF=${SKIFF_BIN:-$TARGET/debug/skiff}
WORKER=${SKIFF_WASM_P2:-$TARGET/wasm32-wasip2/release/examples}/worker.wasm
DATA_DIR=${SKIFF_DATA_DIR:-.skiff}
LOG=$DATA_DIR/dev.log

for f in "$SKIFF" "$WORKER"; do
  [[ -e $f ]] || { echo "run.sh: $f is missing; run \`make build\` first" >&2; exit 1; }
done

mkdir -p "$DATA_DIR"
# A server.url left by an earlier run would point the CLI at a dead address until
# the new server writes its own.
rm -f "$DATA_DIR/server.url"
unset SKIFF_SERVER

"$SKIFF" dev --data-dir "$DATA_DIR" >"$LOG" 2>&1 &
DEV_PID=$!

cleanup() {
  trap - EXIT INT TERM
  if kill -0 "$DEV_PID" 2>/dev/null; then
    echo
    echo "stopping skiff dev (pid $DEV_PID)"
    kill -TERM "$DEV_PID" 2>/dev/null || true
    wait "$DEV_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

dev_failed() {
  echo "run.sh: skiff dev stopped: $1; the end of $LOG:" >&2
  tail -n 20 "$LOG" >&2 || true
  exit 1
}

echo "starting skiff dev (pid $DEV_PID, data in $DATA_DIR, log in $LOG)"
url=""
for _ in $(seq 1 300); do
  kill -0 "$DEV_PID" 2>/dev/null || dev_failed "it exited"
  if [[ -z $url && -s $DATA_DIR/server.url ]]; then
    url=$(<"$DATA_DIR/server.url")
  fi
  # Healthy, and its node registered (skiff dev says so once it has).
  # HTTPS with skiff's own CA (made at first start); the CLI finds .skiff/ca.crt
  # by itself, curl is told.
  if [[ -n $url ]] && curl -fsS --max-time 1 --cacert "$DATA_DIR/ca.crt" "$url/healthz" >/dev/null 2>&1 && grep -q "node .* ready" "$LOG"; then
    break
  fi
  sleep 0.1
done
[[ -n $url ]] && curl -fsS --max-time 1 --cacert "$DATA_DIR/ca.crt" "$url/healthz" >/dev/null 2>&1 || dev_failed "not healthy after 30s"
grep -q "node .* ready" "$LOG" || dev_failed "its node did not become ready in 30s"
# The dashboard's link as skiff dev printed it (with the admin token).
dashboard=$(sed -n 's/^dashboard: //p' "$LOG" | head -n 1)
[[ -n $dashboard ]] || dev_failed "it printed no dashboard link"
echo "skiff dev is up at $url"
echo
# The CLI finds ./.skiff by itself; told, it finds any data dir.
SKIFF_TOKEN=$(<"$DATA_DIR/admin-token")
export SKIFF_SERVER=$url SKIFF_CA_FILE=$DATA_DIR/ca.crt SKIFF_TOKEN

echo "\$ skiff deploy worker.wasm --name hello --replicas 2 --env GREETING=\"hello from skiff\" --wait"
"$SKIFF" deploy "$WORKER" --name hello --replicas 2 --env GREETING="hello from skiff" --wait
echo
echo "\$ skiff get nodes"
"$SKIFF" get nodes
echo
echo "\$ skiff get replicas"
"$SKIFF" get replicas
echo
sleep 2 # let the replicas log a few lines
echo "\$ skiff logs hello --tail 5"
"$SKIFF" logs hello --tail 5 || true

# An HTTP service, reached through the node's ingress by name.
HELLO_HTTP=$(dirname "$WORKER")/hello_http.wasm
INGRESS=$(cat "$DATA_DIR/ingress.addr" 2>/dev/null || true)
if [[ -e $HELLO_HTTP && -n $INGRESS ]]; then
  echo
  echo "\$ skiff deploy hello_http.wasm --name web --replicas 2 --wait"
  "$SKIFF" deploy "$HELLO_HTTP" --name web --replicas 2 --wait
  for _ in 1 2; do
    echo "\$ curl -H 'Host: web.skiff.local' $INGRESS/"
    curl -fsS --max-time 5 -H 'Host: web.skiff.local' "$INGRESS/" || true
  done
fi

cat <<MSG

skiff dev is running (pid $DEV_PID; its log is $LOG). What to try next, in another
terminal in this directory, after: export PATH="$(dirname "$SKIFF"):\$PATH"
  skiff scale hello 5                 more replicas, placed at once
  curl $INGRESS/d/web/               the HTTP service, by path (or Host: web.skiff.local)
  skiff describe deployment hello     spec, replicas and events
  skiff logs hello -f                 follow the logs (Ctrl-C to stop)
  skiff get replicas -o yaml          the API objects
  skiff delete hello
The dashboard: $dashboard
  (HTTPS from skiff's own CA, $DATA_DIR/ca.crt: import it in the browser, or accept the warning)
Ctrl-C here stops skiff dev.
MSG

set +e
wait "$DEV_PID"
status=$?
trap - EXIT INT TERM
[[ $status -eq 0 ]] || echo "skiff dev exited with status $status (see $LOG)" >&2
exit "$status"
