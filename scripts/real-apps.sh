#!/usr/bin/env bash
# Builds the real applications of the e2e suite tests/e2e/real_apps.rs — workloads
# nobody on the team wrote — once, and caches them outside the clone (as the cargo
# target dir is), each under a key of its inputs: this script (package lists,
# commands, pinned versions) and its sources in tests/real-apps/. Prints
# `export VAR=PATH` lines for the tests (`make real-apps` writes them to
# $CARGO_TARGET_DIR/real-apps.env, where the tests also look); progress goes to
# stderr.
#
#   nginx.tar, redis.tar   OCI archives (`skiff image import`) of Debian bookworm
#                          with nginx-light / redis-server, by mmdebstrap and umoci
#   python.wasm            a wasi:http/proxy handler in Python, by componentize-py
#   js.wasm                the same in JavaScript, by componentize-js (StarlingMonkey)
#
# Needs mmdebstrap, umoci, python3 (venv), npm and node: `make deps-test`
# installs them. The Debian mirror is SKIFF_DEBIAN_MIRROR (part of the key).
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."

CACHE=${SKIFF_REAL_APPS_CACHE:-/var/cache/skiff-real-apps}
MIRROR=${SKIFF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SKIFF_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
COMPONENTIZE_PY_VERSION=0.25.1
# The WIT of wasi:http 0.2.12 that skiff's wasmtime serves, from the crate
# cargo has already fetched for the node (Cargo.lock pins it).
WASI_HTTP_CRATE=wasmtime-wasi-http-48.0.8
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "real-apps: $*" >&2; }

# The key of an artifact: this script and the input files given.
key() {
  cat "$SELF" "$@" | sha256sum | cut -c1-16
}

# A Debian bookworm root with PACKAGES (comma-separated) as an OCI archive at
# OUT/NAME.tar, tagged NAME:bookworm, whose command is CMD...
debian_image() {
  local out=$1 name=$2 packages=$3; shift 3
  local work=$out/work
  mkdir -p "$work"
  # The documentation, manual pages and translations are a third of the size.
  mmdebstrap --quiet --variant=apt --include="$packages" --format=tar \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    "$SUITE" "$work/rootfs.tar" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main"
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:bookworm"
  umoci raw add-layer --image "$work/layout:bookworm" "$work/rootfs.tar"
  local cmd=()
  for a in "$@"; do cmd+=(--config.cmd "$a"); done
  umoci config --image "$work/layout:bookworm" --config.env "$PATH_ENV" --config.workingdir / "${cmd[@]}"
  umoci gc --layout "$work/layout"
  tar -C "$work/layout" -cf "$out/$name.tar" .
  rm -rf "$work"
}

wasi_http_wit() {
  local home=${CARGO_HOME:-$HOME/.cargo} dir
  dir=$(ls -d "$home"/registry/src/*/"$WASI_HTTP_CRATE"/wit 2>/dev/null | head -n1 || true)
  if [[ -z $dir ]]; then
    cargo fetch --quiet >&2
    dir=$(ls -d "$home"/registry/src/*/"$WASI_HTTP_CRATE"/wit | head -n1)
  fi
  echo "$dir"
}

python_component() {
  local out=$1 venv=$CACHE/componentize-py-$COMPONENTIZE_PY_VERSION
  if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
  fi
  # From a copy: componentize-py imports the app to snapshot it, and Python
  # would leave __pycache__ in the clone.
  cp -r tests/real-apps/python "$out/src"
  PYTHONDONTWRITEBYTECODE=1 "$venv/bin/componentize-py" -d "$(wasi_http_wit)" -w wasi:http/proxy@0.2.12 \
    componentize -p "$out/src" app -o "$out/python.wasm"
  rm -rf "$out/src"
}

js_component() {
  local out=$1 modules
  # The npm modules, exactly as locked, once per lock.
  modules=$CACHE/js-modules-$(cat tests/real-apps/js/package.json tests/real-apps/js/package-lock.json | sha256sum | cut -c1-16)
  if [[ -f $modules/ok ]]; then
    touch "$modules/ok"
  else
    rm -rf "$modules" "$modules.tmp"
    mkdir -p "$modules.tmp"
    cp tests/real-apps/js/package.json tests/real-apps/js/package-lock.json "$modules.tmp/"
    npm ci --prefix "$modules.tmp" --no-audit --no-fund --loglevel=error >&2
    touch "$modules.tmp/ok"
    mv "$modules.tmp" "$modules"
  fi
  # StarlingMonkey exports wasi:http/incoming-handler@0.2.10, and componentize-js
  # wants the world to name that version: wasmtime's 0.2.12 WIT, renumbered
  # (nothing skiff serves differs between the two).
  local wit=$out/wit
  cp -r "$(wasi_http_wit)" "$wit"
  rm "$wit/world.wit"
  sed -i -E 's/0\.2\.1[12]/0.2.10/g' "$wit"/deps/*.wit
  printf 'package skiff:real-app;\n\nworld app {\n  include wasi:http/proxy@0.2.10;\n}\n' >"$wit/world.wit"
  node "$modules/node_modules/@bytecodealliance/componentize-js/src/cli.js" tests/real-apps/js/app.js \
    --wit "$wit" --world-name app -o "$out/js.wasm" >&2
  rm -rf "$wit"
}

# Builds artifact NAME (file FILE) with FUNCTION into CACHE/NAME-KEY unless it is
# there, under a lock (two runs at once build it once); the key covers INPUTS.
# Prints the artifact's path.
artifact() {
  local name=$1 file=$2 fn=$3; shift 3
  local dir
  dir=$CACHE/$name-$(key "$@")
  mkdir -p "$CACHE"
  exec {lock}>"$dir.lock"
  flock "$lock"
  if [[ -f $dir/ok ]]; then
    touch "$dir/ok"
  else
    local start=$SECONDS
    say "building $name into $dir (log: $dir.log)"
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    # In the background, where `set -e` holds (it does not in an `if`).
    "$fn" "$dir.tmp" >"$dir.log" 2>&1 &
    if ! wait $!; then
      tail -n 30 "$dir.log" >&2
      say "building $name FAILED (log: $dir.log)"
      return 1
    fi
    touch "$dir.tmp/ok"
    mv "$dir.tmp" "$dir"
    say "built $name in $((SECONDS - start)) s: $(du -h "$dir/$file" | cut -f1)"
  fi
  flock -u "$lock"
  echo "$dir/$file"
}

nginx_image() { debian_image "$1" nginx nginx-light nginx -g 'daemon off;'; }
redis_image() { debian_image "$1" redis redis-server redis-server --protected-mode no; }

for tool in mmdebstrap umoci python3 npm node flock; do
  command -v "$tool" >/dev/null || { say "$tool is missing (make deps-test installs it)"; exit 1; }
done

# All four at once: the images wait on the mirror, the components on the CPU.
start=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
artifact nginx nginx.tar nginx_image >"$tmp/nginx" &
artifact redis redis.tar redis_image >"$tmp/redis" &
artifact python python.wasm python_component tests/real-apps/python/app.py >"$tmp/python" &
artifact js js.wasm js_component tests/real-apps/js/app.js tests/real-apps/js/package.json \
  tests/real-apps/js/package-lock.json >"$tmp/js" &
failed=0
for job in $(jobs -p); do wait "$job" || failed=1; done
[[ $failed == 0 ]] || { say "an artifact failed to build"; exit 1; }

# Entries not used for 30 days (other revisions' inputs) go.
find "$CACHE" -mindepth 2 -maxdepth 2 -name ok -mtime +30 -printf '%h\n' | while read -r old; do
  rm -rf "$old" "$old.log" "$old.lock"
done

echo "export SKIFF_REAL_NGINX=$(cat "$tmp/nginx")"
echo "export SKIFF_REAL_REDIS=$(cat "$tmp/redis")"
echo "export SKIFF_REAL_PYTHON=$(cat "$tmp/python")"
echo "export SKIFF_REAL_JS=$(cat "$tmp/js")"
say "ready in $((SECONDS - start)) s"
