"""`tflq.report`: histograms and the layer table for int8 and low-bit QAT models."""
import numpy as np
import pytest
from PIL import Image

import tflq
from tflq import report


@pytest.mark.parametrize("scheme, bits, max_levels", [("int8", 8, 255), ("log3", 3, 7)])
def test_report_renders(scheme, bits, max_levels, trained_conv_bn, digits, tmp_path):
    (x_train, _), _ = digits
    qat = tflq.quantize_model(trained_conv_bn, scheme=scheme, calibration_data=x_train)
    layers = report.write(qat, str(tmp_path / "r"))
    assert [l.name for l in layers] == ["conv1", "conv2", "logits"]
    middle = layers[1]  # first and last stay int8 by default
    assert middle.bits == bits and 1 < middle.levels <= max_levels
    assert middle.packed_bytes == (middle.count * bits + 7) // 8
    for l in layers:
        with Image.open(tmp_path / "r" / f"{l.name}.png") as image:
            assert image.size == (800, 300)
            assert np.asarray(image.convert("L")).std() > 10  # not a blank canvas
    table = (tmp_path / "r" / "report.md").read_text()
    assert f"| conv2 | {'int8' if scheme == 'int8' else 'log3'} | {bits} |" in table
