# The two commands of the README. Each installs what it needs (tools/setup.sh).
.PHONY: demo test

# Fashion-MNIST CNN: float training, calibrated int8 QAT, TFLite int8, all 10,000 test images.
demo:
	bash tools/setup.sh demo
	.venv/bin/tflq train --dataset=fashion_mnist --model=cnn --epochs=3 --qat_epochs=1 \
	    --output_dir=out/demo --overwrite

# The whole suite. Firmware tests also need TFLM sources: TFLQ_TFLM_ROOT (see README).
test:
	bash tools/setup.sh test
	.venv/bin/python -m pytest -ra
