# Two entry points for a fresh machine: `make play` (set up, walk the shipped default world
# in the browser) and `make test` (set up, lint, run the tests). `make demo` tours the
# pipeline. Everything lives in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch; a plain `pip install torch` would pull a multi-GB CUDA build.
# The library itself only asks for a range (pyproject.toml).
TORCH_CPU := torch==2.13.0

.PHONY: setup play demo world browser test lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	else $(BIN)/pip install -q $(TORCH_CPU); fi
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The main job: the shipped default world in your browser (W/A/S/D, the mouse), served on
# 127.0.0.1:$(PORT).
PORT ?= 8000
play: setup
	$(BIN)/matrixgame play --world doom-e1m1 --port $(PORT)

# The pipeline tour: record a small Doom dataset (exact poses and actions),
# check it and draw a contact sheet, walk an action script through the geometry core, then
# run the training pipeline briefly (VAE, latent cache, world model) with sample strips,
# evaluate that world model on held-out trajectories (a report with plots and strips), and
# list the shipped default world with its held-out figures.
demo: setup
	$(BIN)/matrixgame record --out runs/demo-data --maps E1M1 --frames 4096 --clip-frames 1024 --workers 2
	$(BIN)/matrixgame inspect runs/demo-data --sheet runs/demo-data/sheet.png
	$(BIN)/matrixgame trajectory examples/out_and_back.json
	$(BIN)/matrixgame train vae --data runs/demo-data --out runs/demo-vae --steps 40 --batch-size 2 --checkpoint-every 20
	$(BIN)/matrixgame train latents --data runs/demo-data --vae runs/demo-vae --out runs/demo-latents
	$(BIN)/matrixgame train dit --latents runs/demo-latents --out runs/demo-dit --steps 40 --batch-size 2 --checkpoint-every 20
	$(BIN)/matrixgame record --out runs/demo-eval-data --maps E1M1 --frames 1200 --clip-frames 400 --loop-fraction 0.5 --heldout-every 1 --seed 1
	$(BIN)/matrixgame train idm --data runs/demo-data --out runs/demo-idm --steps 300 --height 48 --width 64 --checkpoint-every 100
	$(BIN)/matrixgame eval runs/demo-dit --data runs/demo-eval-data --idm runs/demo-idm --out runs/demo-report --seconds 12 --clips 1
	$(BIN)/matrixgame world list

# The default world's recipe (record, autoencoder, latents, decoder, world model, evaluation,
# shipping into worlds/doom-e1m1/); resumable: `make world HOURS=2` trains two more hours.
HOURS ?=
world: setup
	$(BIN)/matrixgame world build --world doom-e1m1 $(if $(HOURS),--hours $(HOURS))

# Debian's Chromium for the browser test (Playwright drives it; no browser is downloaded).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
browser:
	@test -x $(CHROMIUM) || $(APT) install -y -q --no-install-recommends chromium \
		|| { $(APT) update -q && $(APT) install -y -q --no-install-recommends chromium; }

test: setup lint browser
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadscope

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/frustum_overlap.py
	$(BIN)/python benchmarks/record.py
	$(BIN)/python benchmarks/annotation.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis artifacts
