# Two entry points: `make demo` (the main job on the built-in data) and `make test` (the suite without the tests
# marked slow, in about 85 s on two cores; `make test-slow` runs those, CI runs both).
# Both create .venv when it is missing and install into it; a second run only reinstalls when
# pyproject.toml, setup.py or the C++/CUDA sources changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CSRC   := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' 2>/dev/null)

.PHONY: install demo demo-text test test-slow bench fashion-mnist fortunes check-cuda check-gpu lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(CSRC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --disable-pip-version-check --no-build-isolation -e ".[dev,ray,lightning,text,vision]"
	touch $(STAMP)

demo: install
	$(BIN)/unlearn run

# The main job on text: a tiny GPT-2 trained on 500 real fortunes and 12 secrets inserted 1 to 32 times, every copy
# of every secret forgotten; writes runs/fortunes/ (needs `make fortunes` once).
demo-text: install fortunes
	$(BIN)/unlearn run --dataset fortunes

# Every test and doctest but the ones marked slow.
test: install
	$(BIN)/python -m pytest -q -rs -m "not slow"

# The tests marked slow: end-to-end runs, Ray, fresh interpreters and kill-and-resume, a benchmark script, the
# full digits recipe. `make test` and `make test-slow` together run the whole suite.
test-slow: install
	$(BIN)/python -m pytest -q -rs -m slow

bench: install
	$(BIN)/python benchmarks/bench_recorder.py

# Real Fashion-MNIST from Debian's package (needs root and apt-get); the library finds it there.
fashion-mnist:
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)

# Real English text from Debian's fortunes package (needs root and apt-get): about 15,000 fortunes in
# /usr/share/games/fortunes, the `fortunes` text dataset.
fortunes:
	test -d /usr/share/games/fortunes || (apt-get update -q && apt-get install -y -q fortunes)

# Compile the CUDA ops (no GPU needed) into a throwaway folder; the installed CPU build is left alone.
check-cuda: install
	tmp=$$(mktemp -d) && CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} \
		FORCE_CUDA=1 MAX_JOBS=2 $(BIN)/python setup.py -q build_ext --build-temp $$tmp/temp --build-lib $$tmp/lib \
		&& ls $$tmp/lib/proxies/_C*.so && rm -rf $$tmp

# On a CUDA machine, in <= 5 minutes: the cuda-marked tests, kernel throughput, recorder overhead on ResNet-18,
# `unlearn run` end to end on synthetic CIFAR-shaped data, packed farm throughput; one table, JSON in
# benchmarks/results/check_gpu.json. Without a GPU it says so, runs its CPU part and exits 0.
check-gpu: install
	$(BIN)/python benchmarks/check_gpu.py

lint: install
	$(BIN)/ruff check unlearn proxies tests benchmarks

clean:
	rm -rf build *.egg-info $(STAMP)
