# Every target sets itself up: libtorch comes from the torch==2.11.0 wheel, installed once into
# a cache outside the checkout (scripts/setup-libtorch.sh; PRISM_CACHE overrides where).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
LIBTORCH_DIR = $$(bash scripts/setup-libtorch.sh | tail -n 1)
CARGO = LIBTORCH="$(LIBTORCH_DIR)" cargo

.PHONY: demo test build release lint fmt bench fixtures doctor clean-cache

demo: release
	./target/release/prism doctor
	@if ./target/release/prism run --help >/dev/null 2>&1; then \
	  ./target/release/prism run configs/quickstart.toml; \
	else \
	  echo "make demo: the PRISM pipeline (prism run configs/quickstart.toml) is not built yet;"; \
	  echo "only the toolchain above works so far. See README.md, Status."; \
	  exit 1; \
	fi

test:
	bash scripts/setup-test-tools.sh
	$(CARGO) build --all-targets
	$(CARGO) test --lib --bins --tests -- --test-threads=2

build:
	$(CARGO) build

release:
	$(CARGO) build --release

lint:
	cargo fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	cargo fmt --all

bench: release
	bash benches/run.sh

fixtures:
	PY=$$(bash scripts/setup-fixture-python.sh | tail -n 1); \
	for f in tests/fixtures/gen_*.py; do echo "== $$f"; "$$PY" "$$f"; done

doctor: build
	./target/debug/prism doctor
