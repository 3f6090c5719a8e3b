# Skiff: `make run` to try it, `make test` to run the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO     ?= cargo
SKIFF     := target/debug/skiff
DEV_DIR   := $(CURDIR)/.skiff-dev
DEV_API   ?= 127.0.0.1:7700
# The administrator's credentials that `skiff dev` writes (mutual TLS).
export SKIFF_CONFIG ?= $(DEV_DIR)/data/server/admin.conf

# Debian packages the build, the agent and the tests need.
APT_PACKAGES := runc busybox-static protobuf-compiler umoci skopeo iproute2 gcc protobuf-compiler-grpc docker-registry apache2-utils containernetworking-plugins iptables nftables systemd prometheus git
APT_COMMANDS := runc busybox protoc umoci skopeo ip cc grpc_python_plugin docker-registry htpasswd /usr/lib/cni/bridge iptables nft systemd-analyze promtool git
# Modules of Debian's /usr/bin/python3 the Python client's test needs
# (clients/python), and their packages.
APT_PY_PACKAGES := python3-grpcio python3-protobuf
APT_PY_MODULES  := grpc google.protobuf

.PHONY: help deps build image run sample stop status test lint fmt clean structure fuzz fuzz-seeds docs

help:
	@echo "make run    build, start 'skiff dev' (server + agent) and run examples/hello.yaml"
	@echo "make stop   delete the sample job and stop 'skiff dev'"
	@echo "make test   install what the tests need and run the whole suite"
	@echo "make lint   cargo fmt --check and clippy -D warnings"
	@echo "make fuzz   run every fuzz target for FUZZ_SECONDS (default 60) each"
	@echo "make structure  each crate's modules and what they import (no circles allowed)"

## Installs the Debian packages that are missing (needs root and apt).
deps:
	@missing=""; \
	for i in $$(seq 1 $(words $(APT_COMMANDS))); do \
	  cmd=$$(echo $(APT_COMMANDS) | cut -d' ' -f$$i); pkg=$$(echo $(APT_PACKAGES) | cut -d' ' -f$$i); \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	for i in $$(seq 1 $(words $(APT_PY_MODULES))); do \
	  mod=$$(echo $(APT_PY_MODULES) | cut -d' ' -f$$i); pkg=$$(echo $(APT_PY_PACKAGES) | cut -d' ' -f$$i); \
	  /usr/bin/python3 -c "import $$mod" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: run as root to install$$missing" >&2; exit 1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  for u in docker-registry prometheus prometheus-node-exporter; do systemctl disable --now $$u >/dev/null 2>&1 || true; done; \
	fi

build: deps
	$(CARGO) build -p skiff

## A small busybox OCI image layout at images/busybox:latest, built with umoci.
image: deps
	@scripts/build-busybox-image.sh images/busybox latest

## Starts `skiff dev` in the background, applies the sample job, shows it running.
run: build image
	@$(MAKE) --no-print-directory sample

## `make run` without the build: starts `skiff dev` if it is not running
## (with DEV_FLAGS), applies SAMPLE (a job named hello) and waits for its two
## replicas to run; exits 1 showing why when they do not.
SAMPLE    ?= examples/hello.yaml
DEV_FLAGS ?=
sample:
	@mkdir -p $(DEV_DIR)
	@if $(SKIFF) get nodes >/dev/null 2>&1; then \
	  echo "skiff dev is already running at https://$(DEV_API)"; \
	else \
	  echo "starting skiff dev (log: $(DEV_DIR)/dev.log)"; \
	  nohup $(SKIFF) dev --data-dir $(DEV_DIR)/data --api $(DEV_API) $(DEV_FLAGS) >>$(DEV_DIR)/dev.log 2>&1 & echo $$! > $(DEV_DIR)/dev.pid; \
	  for i in $$(seq 1 100); do $(SKIFF) get nodes 2>/dev/null | grep -q ready && break; sleep 0.2; done; \
	fi
	@$(SKIFF) get nodes
	@echo; echo "$$ skiff apply -f $(SAMPLE)"
	@$(SKIFF) apply -f $(SAMPLE)
	@ready() { $(SKIFF) get allocs --job hello --status running -o json | grep -c '"healthy": true'; }; \
	for i in $$(seq 1 150); do \
	  [ "$$(ready)" -ge 2 ] && break; \
	  $(SKIFF) get allocs --job hello -o json | grep -q -e '"status": "failed"' -e '"reason": "back_off"' && break; \
	  sleep 0.2; \
	done; \
	if [ "$$(ready)" -lt 2 ]; then \
	  echo; echo "the sample's containers did not start:"; \
	  $(SKIFF) get allocs --job hello; echo; $(SKIFF) describe job hello; \
	  echo; echo "(skiff dev's log: $(DEV_DIR)/dev.log)"; exit 1; \
	fi
	@echo; echo "$$ skiff get allocs"; $(SKIFF) get allocs --job hello
	@id=$$($(SKIFF) get allocs --job hello --status running -o json | sed -n 's/.*"id": "\([0-9a-f]*\)".*/\1/p' | head -1); \
	  for i in $$(seq 1 50); do out=$$($(SKIFF) logs $$id 2>/dev/null); [ -n "$$out" ] && break; sleep 0.2; done; \
	  echo; echo "$$ skiff logs $${id:0:8}"; echo "$$out"
	@echo; echo "Skiff is running. Try: $(SKIFF) describe job hello | $(SKIFF) get nodes | make stop"

## Deletes the sample job, waits for its containers to stop, stops `skiff dev`.
stop:
	@if $(SKIFF) delete job hello 2>/dev/null; then \
	  for i in $$(seq 1 150); do \
	    $(SKIFF) get allocs --job hello -o json | grep -q '"status": "running"' || break; sleep 0.2; \
	  done; \
	fi
	@if [ -f $(DEV_DIR)/dev.pid ]; then kill $$(cat $(DEV_DIR)/dev.pid) 2>/dev/null || true; rm -f $(DEV_DIR)/dev.pid; echo "skiff dev stopped"; fi

status:
	@$(SKIFF) get nodes && $(SKIFF) get jobs && $(SKIFF) get allocs

## The whole suite: unit, property and end-to-end tests (real runc; needs root).
test: deps
	$(CARGO) build -p skiff
	$(CARGO) test --workspace

## Fuzzing (cargo-fuzz, libFuzzer). The targets' bodies are in
## crates/fuzzing; `make test` replays fuzz/corpus/ through them. cargo-fuzz
## passes -Z flags, which the stable toolchain takes with RUSTC_BOOTSTRAP=1;
## `-s none` builds without a sanitizer (FUZZ_SANITIZER=address for ASan,
## a slower build). New inputs go to target/fuzz-corpus/TARGET, crashes to
## fuzz/artifacts/TARGET: once fixed, copy a crash into fuzz/corpus/TARGET.
FUZZ_SECONDS   ?= 60
FUZZ_SANITIZER ?= none
FUZZ_TARGETS   ?= spec cluster_api node_api peer agent_api layer wal
FUZZ           := RUSTC_BOOTSTRAP=1 cargo fuzz
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	$(FUZZ) build -s $(FUZZ_SANITIZER)
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  echo "== fuzzing $$t for $(FUZZ_SECONDS)s"; \
	  $(FUZZ) run -s $(FUZZ_SANITIZER) $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 || exit 1; \
	done

## Rewrites the seed inputs of fuzz/corpus/ (crates/fuzzing/src/bin/fuzz-seeds.rs).
fuzz-seeds:
	$(CARGO) run -q -p skiff-fuzzing --bin fuzz-seeds

## Rewrites what docs/ takes from the code: the metrics reference in
## docs/observability.md (a test fails while it is out of date).
docs:
	SKIFF_BLESS=1 $(CARGO) test -q -p skiff --bin skiff metrics_doc

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## The structure drawing: every crate's modules, their size, what each imports.
structure:
	@SKIFF_STRUCTURE=1 $(CARGO) test -q -p skiff-tests --test structure every_crate -- --nocapture 2>&1 | sed -n '/^skiff/,/^$$/p'

clean:
	-$(MAKE) stop
	rm -rf $(DEV_DIR) images
	$(CARGO) clean
