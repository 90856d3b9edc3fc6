# skiff's commands: the README's, and the ones CI runs (.ci/run calls `make test`).
#
#   make run     build everything, start `skiff dev` and deploy an example workload
#   make test    lint, build, then every unit and end-to-end test
#   make lint    clippy (warnings denied) and rustfmt
#   make build   the skiff binary and the Wasm examples
#   make deps    what building and running need: toolchain targets, system packages
#   make deps-test  the rest of what the tests need (browser, Prometheus, etcd, registry,
#                schemathesis, image and component builders); both quiet when present
#   make real-apps  the real applications of tests/e2e/real_apps.rs, built once into a cache
#   make bench   benchmarks at scale (simulated nodes) and deploy latency; see bench/

SHELL := /bin/bash
CARGO ?= cargo

# Where cargo puts its output: CI points CARGO_TARGET_DIR at a cache outside the clone.
TARGET := $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),$(CURDIR)/target)

# Debian packages that building and running skiff need beyond a stock machine with
# rustup (`make run` installs only these); each installed only when `dpkg -s` says
# it is missing. gcc, libc6-dev: cc links the build; libssl-dev, pkg-config: the
# nodes' TLS (native-tls); protobuf-compiler: the etcd-client crate's build.
# runc: the OCI runtime nodes run containers with; containernetworking-plugins,
# iptables, iproute2: container networking (CNI bridge, masquerade, netns);
# curl: scripts/run.sh.
PACKAGES ?= gcc libc6-dev libssl-dev pkg-config protobuf-compiler \
  runc containernetworking-plugins iptables iproute2 curl
# What only the tests need (`make test` adds these). busybox-static: the e2e
# tests build their container image from it.
TEST_PACKAGES ?= busybox-static
# The observability tests (issue 6): a real Prometheus, and Debian's Chromium
# driven by playwright-core (npm, tests/browser/). Node.js may come from Debian
# (nodejs + npm) or from NodeSource (whose nodejs carries npm): ask for Debian's
# packages only when there is no npm at all.
TEST_PACKAGES += chromium prometheus $(if $(shell command -v npm),,nodejs npm)
# Registry pulls (issue 3): a real registry on loopback (docker-registry) pushed
# to with skopeo. Private registries (issue 21): its htpasswd auth takes bcrypt
# entries, which apache2-utils' `htpasswd -B` writes; in token mode a token
# server in Python signs its JWTs with the openssl command.
TEST_PACKAGES += docker-registry skopeo apache2-utils openssl
# Fault tests (issue 8): a full data dir on a small loop-mounted ext4 (mkfs.ext4).
TEST_PACKAGES += e2fsprogs
# The API fuzz test (issue 8): schemathesis (PyPI, pinned) in a venv outside the
# clone; Debian's python3-venv when the machine's Python has no venv/ensurepip.
PY_CACHE ?= /var/cache/skiff-py
SCHEMATHESIS_VERSION := 4.32.5
TEST_PACKAGES += $(if $(shell python3 -c 'import ensurepip, venv' 2>/dev/null && echo ok),,python3-venv)
# Several servers (issue 9): etcd members and etcdctl from Debian.
TEST_PACKAGES += etcd-server etcd-client
# Real applications (issue 16, scripts/real-apps.sh): Debian images made by
# mmdebstrap and umoci (componentize-py and componentize-js come from PyPI and npm,
# pinned, into the cache); redis-tools: the test talks to redis with redis-cli.
TEST_PACKAGES += mmdebstrap umoci redis-tools
RUST_TARGETS := wasm32-wasip1 wasm32-wasip2
RUST_COMPONENTS := clippy rustfmt
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# The guest examples, as components (p2) and as core modules (p1: a component can
# only exit 0 or 1, so the crasher's status 3 shows only there). They ship without
# debug info: 90 KiB instead of 2.5 MiB to upload
# and compile. These apply only to the wasm invocations below.
WASM_ENV := CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo
WASM_P2 := $(TARGET)/wasm32-wasip2/release/examples
WASM_P1 := $(TARGET)/wasm32-wasip1/release/examples

export SKIFF_BIN := $(TARGET)/debug/skiff
export SKIFF_WASM_P2 := $(WASM_P2)
export SKIFF_WASM_P1 := $(WASM_P1)
export SKIFF_SCHEMATHESIS := $(PY_CACHE)/bin/st

.PHONY: all deps deps-test real-apps build wasm lint test run bench bench-report fuzz

all: build

# Installs the Debian packages named in $(1) that `dpkg -s` does not know.
define apt_install
	@missing=""; \
	for p in $(1); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	@installed="$$(rustup target list --installed)"; \
	for t in $(RUST_TARGETS); do \
	  grep -qx "$$t" <<<"$$installed" || rustup target add "$$t"; \
	done
	@installed="$$(rustup component list --installed)"; \
	for c in $(RUST_COMPONENTS); do \
	  grep -q "^$$c" <<<"$$installed" || rustup component add "$$c"; \
	done
	$(call apt_install,$(PACKAGES))

deps-test: deps
	$(call apt_install,$(TEST_PACKAGES))
	@# The browser test's node modules, exactly as locked; again only when the lock changed.
	@if [ ! -f tests/browser/node_modules/.package-lock.json ] || \
	    [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then \
	  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error; \
	fi
	@$(PY_CACHE)/bin/st --version 2>/dev/null | grep -q "version $(SCHEMATHESIS_VERSION)$$" || \
	  { echo "installing schemathesis $(SCHEMATHESIS_VERSION) into $(PY_CACHE)"; \
	    python3 -m venv $(PY_CACHE) && \
	    $(PY_CACHE)/bin/pip install -q --disable-pip-version-check "schemathesis==$(SCHEMATHESIS_VERSION)"; }

# The real applications (scripts/real-apps.sh): built once per set of inputs into
# REAL_APPS_CACHE; their paths go to $(TARGET)/real-apps.env, which `make test`
# exports and the tests read when the variables are not set.
REAL_APPS_CACHE ?= /var/cache/skiff-real-apps
real-apps: deps-test
	@mkdir -p $(TARGET)
	SKIFF_REAL_APPS_CACHE=$(REAL_APPS_CACHE) scripts/real-apps.sh >$(TARGET)/real-apps.env.tmp
	@mv $(TARGET)/real-apps.env.tmp $(TARGET)/real-apps.env

build: deps wasm
	$(CARGO) build --workspace --bins

wasm: deps
	$(WASM_ENV) $(CARGO) build -p skiff-sdk --examples --release --target wasm32-wasip2
	$(WASM_ENV) $(CARGO) build -p skiff-sdk --examples --release --target wasm32-wasip1

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# A test that hangs must fail the run with its name on screen, not use up CI's
# 90 minutes: the whole test run gets 40 (it takes about 2 when warm).
test: deps-test lint build real-apps
	. $(TARGET)/real-apps.env && timeout --kill-after=30s 40m $(CARGO) test --workspace
	timeout --kill-after=30s 10m $(MAKE) --no-print-directory fuzz

# Fuzzing (issue 8): each cargo-fuzz target of fuzz/ for FUZZ_SECONDS, from its
# committed seeds (fuzz/seeds/TARGET) and the corpus grown by earlier runs (kept
# with the build under the target dir, a cache). A panic, a write outside a
# layer's root or an allocation past the limit fails the run; the input is left
# in fuzz/artifacts/TARGET/. cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1.
FUZZ_TARGETS := quantity manifest api_requests image_archive layer
FUZZ_SECONDS ?= 20
FUZZ := cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz
FUZZ_FLAGS := --debug-assertions --target-dir $(TARGET)/fuzz
fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked --quiet
	$(FUZZ) build $(FUZZ_FLAGS)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(TARGET)/fuzz/corpus/$$t; log=$(TARGET)/fuzz/$$t.log; \
	  if ($(FUZZ) run $(FUZZ_FLAGS) $$t $(TARGET)/fuzz/corpus/$$t seeds/$$t -- \
	      -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >$$log 2>&1; then \
	    runs=$$(grep -o 'number_of_executed_units: *[0-9]*' $$log | grep -o '[0-9]*$$'); \
	    rate=$$(grep -o 'average_exec_per_sec: *[0-9]*' $$log | grep -o '[0-9]*$$'); \
	    echo "fuzz $$t: $$runs runs, $$rate/s, no crash"; \
	  else \
	    tail -n 40 $$log; echo "fuzz $$t FAILED (log: $$log; input: fuzz/artifacts/$$t/)"; exit 1; \
	  fi; \
	done

run: build
	scripts/run.sh

# The benchmarks of issue 7 against a release build: a real `skiff server` with
# thousands of simulated nodes (`skiff node --simulate`), and `skiff dev` for
# deploy latency. Results go to bench/results/<time>.json and the README table is
# regenerated from them. BENCH_ARGS passes options (`--scenarios a,failover`).
BENCH_ARGS ?=
# Options for the etcd-store run that follows (`--nodes 1000`).
BENCH_ETCD_ARGS ?=
# The http scenario's peer: the wasmtime CLI of skiff's wasmtime version, built
# once into a cache outside the clone (a long build the first time), and wrk.
BENCH_TOOLS ?= /var/cache/skiff-bench-tools
WASMTIME_VERSION := 48.0.8
# http-big serves real-apps' componentize-py handler (SKIFF_REAL_PYTHON in real-apps.env).
bench: deps-test wasm real-apps
	@dpkg -s wrk >/dev/null 2>&1 || (echo "installing wrk" && $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk >/dev/null)
	@$(BENCH_TOOLS)/bin/wasmtime --version 2>/dev/null | grep -q "$(WASMTIME_VERSION)" || \
	  $(CARGO) install wasmtime-cli --version $(WASMTIME_VERSION) --locked --root $(BENCH_TOOLS) \
	    --target-dir $(BENCH_TOOLS)/target
	$(CARGO) build --release -p skiff-cli -p skiff-bench
	. $(TARGET)/real-apps.env && $(TARGET)/release/skiff-bench run --skiff $(TARGET)/release/skiff --wasm $(WASM_P2)/worker.wasm \
	  --component $(WASM_P2)/hello_http.wasm --wasmtime $(BENCH_TOOLS)/bin/wasmtime $(BENCH_ARGS)
	# The scheduler's scenarios again with the etcd store (several servers' store), recorded beside SQLite's.
	$(TARGET)/release/skiff-bench run --skiff $(TARGET)/release/skiff --wasm $(WASM_P2)/worker.wasm \
	  --store etcd --scenarios a,failover,deploy $(BENCH_ETCD_ARGS)
	$(TARGET)/release/skiff-bench report

# Regenerates the README's benchmark table from bench/results/ without running anything.
bench-report:
	$(CARGO) run --release -q -p skiff-bench -- report
