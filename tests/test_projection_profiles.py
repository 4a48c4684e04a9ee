"""ProjectionProfiles: hand-computed values; Keras vs the integer C code, on the
host (ctypes) and on rv32imac in QEMU."""
import ctypes
import os
import subprocess

import numpy as np
import pytest

from tflq.converters import features, toolchain
from tflq import datasets
from tflq.layers import ProjectionProfiles, bin_sizes

ROOT = os.path.join(os.path.dirname(__file__), "..")
C_SOURCE = os.path.join(ROOT, "micro", "features", "projection_profiles.c")
KERNELS = os.path.join(ROOT, "micro", "kernels")  # tflq_requantize.h


def test_hand_computed_4x4_with_2_bins():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) / 255
    got = ProjectionProfiles(bins=2)(image).numpy()[0] * 255
    # rows {0,1},{2,3}; columns {0,1},{2,3}; diagonals i-j <= 0 | > 0; anti i+j <= 3 | > 3
    want = [28 / 8, 92 / 8, 52 / 8, 68 / 8, 60 / 10, 60 / 6, 50 / 10, 70 / 6]
    # 10 terms at most, plus the roundings of pixel / 255, of the weight 1 / n and of * 255.
    np.testing.assert_allclose(got, want, rtol=float32_sum_bound(10 + 3), atol=0)
    assert bin_sizes(4, 4, 2).tolist() == [8, 8, 8, 8, 10, 6, 10, 6]


def float32_sum_bound(terms: int) -> float:
    """Relative error bound of a float32 dot product of ``terms`` non-negative terms, in
    any summation order (Higham, Accuracy and Stability, 3.1: gamma_n = n u / (1 - n u),
    u = 2^-24): one rounding per product and per addition. oneDNN's matmul picks the
    order (and so the result's last bits) by CPU; this bound holds for all of them."""
    u = 2.0 ** -24
    return terms * u / (1 - terms * u)


def test_28x28_gives_64_features_in_unit_range():
    layer = ProjectionProfiles(bins=16)
    images = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    out = layer(images).numpy()
    tol = float32_sum_bound(int(bin_sizes(28, 28, 16).max()) + 1)
    assert out.shape == (8, 64) and out.min() >= 0 and out.max() <= 1 + tol
    ones = layer(np.ones((1, 28, 28, 1), np.float32)).numpy()
    # Each feature sums n copies of float32(1/n): exact 1 only up to that bound.
    np.testing.assert_allclose(ones, 1.0, rtol=tol, atol=0)
    assert ProjectionProfiles.from_config(layer.get_config()).bins == 16


@pytest.fixture(scope="module")
def fashion_uint8():
    (x, _), _ = datasets.load("fashion_mnist")
    return np.round(x[:300, ..., 0] * 255).astype(np.uint8)


SCALE, ZERO_POINT = 1 / 255 * 0.6, -128  # a model input range of [0, 0.6]


def test_integer_features_match_keras_within_one_step(fashion_uint8):
    keras_features = ProjectionProfiles(16)(fashion_uint8[..., None] / np.float32(255)).numpy()
    keras_q = np.clip(np.round(keras_features / SCALE) + ZERO_POINT, -128, 127)
    ints = features.int8_profiles(fashion_uint8, 16, SCALE, ZERO_POINT).astype(int)
    assert np.abs(ints - keras_q).max() <= 1
    # Measured 98.6%: at exact half steps fixed point rounds up, numpy to even,
    # and float32 sums wobble. The device matches the integer reference exactly.
    assert np.mean(ints == keras_q) >= 0.98


def _c_library(tmp_path):
    lib = tmp_path / "libpp.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", f"-I{KERNELS}",
                    "-o", str(lib), C_SOURCE], check=True)
    pp = ctypes.CDLL(str(lib)).tflq_projection_profiles
    pp.restype = None
    return pp


def _multipliers(bins):
    pairs = features.profile_multipliers(28, 28, bins, SCALE)
    return (np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32))


def test_c_on_the_host_equals_the_reference(fashion_uint8, tmp_path):
    pp = _c_library(tmp_path)
    for bins in (16, 7):
        mult, shift = _multipliers(bins)
        sums = np.zeros(4 * bins, np.int32)
        want = features.int8_profiles(fashion_uint8, bins, SCALE, ZERO_POINT)
        for image, expected in zip(fashion_uint8, want):
            out = np.zeros(4 * bins, np.int8)
            pp(np.ascontiguousarray(image).ctypes, 28, 28, bins, mult.ctypes, shift.ctypes,
               ZERO_POINT, sums.ctypes, out.ctypes)
            np.testing.assert_array_equal(out, expected)


def _c_array(name, ctype, values):
    return f"static const {ctype} {name}[] = {{{', '.join(str(int(v)) for v in values)}}};\n"


def test_c_on_rv32imac_in_qemu_equals_the_reference(fashion_uint8, tmp_path):
    try:
        tc = toolchain.find_toolchain()
        toolchain.find_qemu()
    except Exception as e:  # noqa: BLE001 -- the message names the package
        pytest.skip(str(e))
    images = fashion_uint8[:8]
    mult, shift = _multipliers(16)
    driver = tmp_path / "main.c"
    driver.write_text(
        '#include <stdio.h>\n#include "projection_profiles.h"\n'
        + _c_array("images", "uint8_t", images.ravel()) + _c_array("mult", "int32_t", mult)
        + _c_array("shift", "int32_t", shift)
        + "int main(void) {\n  int32_t sums[64]; int8_t out[64];\n"
        f"  for (int k = 0; k < {len(images)}; ++k) {{\n"
        f"    tflq_projection_profiles(images + k * 784, 28, 28, 16, mult, shift, {ZERO_POINT}, sums, out);\n"
        '    printf("F %d", k); for (int i = 0; i < 64; ++i) printf(" %d", out[i]); printf("\\n");\n'
        "  }\n  return 0;\n}\n")
    elf = tmp_path / "pp.elf"
    fe310 = os.path.join(ROOT, "micro", "fe310")
    objects = []
    for source in (str(driver), C_SOURCE, os.path.join(fe310, "fe310.c"), os.path.join(fe310, "uart.c")):
        objects.append(str(tmp_path / (os.path.basename(source) + ".o")))
        subprocess.run([tc.tool("gcc"), *tc.c_flags(semihosting=True), "-O2", "-Wall", "-Werror",
                        f"-I{os.path.dirname(C_SOURCE)}", f"-I{KERNELS}", "-c", source, "-o",
                        objects[-1]], check=True)
    subprocess.run([tc.tool("gcc"), *objects, *tc.link_flags("hifive1-reva"), "-o", str(elf)],
                   check=True)
    result = toolchain.run_qemu(elf, timeout_s=60)
    assert result.exit_code == 0, result.uart_text[-500:]
    lines = [l.split()[2:] for l in result.uart_text.splitlines() if l.startswith("F ")]
    device = np.array(lines, dtype=int)
    np.testing.assert_array_equal(device, features.int8_profiles(images, 16, SCALE, ZERO_POINT))
