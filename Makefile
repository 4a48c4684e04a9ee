# The two commands of the README. Each installs what it needs (tools/setup.sh).
.PHONY: demo test

# TFLM's sources: $TFLQ_TFLM_ROOT, else $TFLQ_TFLM_ARCHIVE, else the pinned downloads
# (converters/tflm_sources.py). The shared archive beside a checkout is used if present.
TFLM_ARCHIVE := $(wildcard ../shared/deps/tflm-deps-90b983c2.tar.gz)
ifeq ($(TFLQ_TFLM_ROOT)$(TFLQ_TFLM_ARCHIVE),)
  ifneq ($(TFLM_ARCHIVE),)
    export TFLQ_TFLM_ARCHIVE := $(abspath $(TFLM_ARCHIVE))
  endif
endif

# Fashion-MNIST CNN: float, int8 QAT and log3 QAT, each as FE310 firmware run in QEMU;
# one table (out/demo/summary.md).
demo:
	bash tools/setup.sh demo
	.venv/bin/tflq demo --output_dir=out/demo --overwrite

# The whole suite, firmware tests included (`make test PYTEST_ARGS='-m "not firmware"'`
# for the quick loop).
test:
	bash tools/setup.sh test
	.venv/bin/python -m pytest -ra $(PYTEST_ARGS)
