# hvdkit: `make demo` runs the main job, `make test` runs every test.
# Both set up what they need first (scripts/setup.sh is quick once done).

VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test test-unit test-integration test-parallel check-cuda bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m hvdkit train

test: setup
	bash scripts/run_tests.sh

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

test-parallel: setup
	bash scripts/run_parallel_tests.sh

check-cuda:
	bash scripts/check_cuda.sh

clean:
	rm -rf build *.egg-info hvdkit/*.so

bench: setup
	$(PY) -m hvdkit bench

# The CPU image (and the GPU one where its CUDA base is present), and a 4-rank
# job across 2 containers over ssh: many minutes, so not part of `make test`.
.PHONY: docker docker-test
docker:
	bash scripts/docker.sh build

docker-test:
	bash scripts/docker.sh test
