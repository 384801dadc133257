# Every target sets itself up: libtorch comes from the torch==2.11.0 wheel, installed once into
# a cache outside the checkout (scripts/setup-libtorch.sh; PRISM_CACHE overrides where).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
LIBTORCH_DIR = $$(bash scripts/setup-libtorch.sh | tail -n 1)
CARGO = LIBTORCH="$(LIBTORCH_DIR)" cargo

.PHONY: demo test build release lint fmt bench fixtures doctor clean-cache

demo: release
	./target/release/prism doctor
	./target/release/prism run configs/quickstart.toml
	@echo "make demo: results table runs/quickstart/results.md, plots runs/quickstart/plots/"

# test also installs the pinned `openai` client (tests/serve_openai_python.rs) into the torch
# venv: small, unlike the rest of tests/fixtures/requirements.txt, which only `make fixtures` needs.
test:
	bash scripts/setup-test-tools.sh
	"$(LIBTORCH_DIR)/../../../../bin/python" -m pip install --quiet --disable-pip-version-check \
	  $$(grep -E '^openai==' tests/fixtures/requirements.txt)
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
