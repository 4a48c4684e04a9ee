"""Flags shared by the verbs."""
from absl import flags

from tflq import datasets

DATASET = flags.DEFINE_enum("dataset", "fashion_mnist", list(datasets.NAMES),
                            "Built-in dataset (no network needed).")
SCHEME = flags.DEFINE_string(
    "scheme", "int8", "Quantization scheme: int8 (Jacob et al.), a low-bit weight quantizer "
    "alias (log3, log4, ternary, bwn, ul2q2, dorefa2, fixed4, minmax4, inq4, ...) or a preset "
    "with low-bit activations (binary_net, fixed_net4, qnn_w1a2, ...); see "
    "tflq.schemes.names().")
ACTIVATIONS = flags.DEFINE_string(
    "activations", None, "Low-bit activations for the outputs of every weighted layer but the "
    "last, on top of --scheme: binary, ternary, pact2..pact7, dorefa1..dorefa7, fixed1..fixed7 "
    "(tflq.quantizers.activations).")


def scheme():
    """--scheme, or the tflq.schemes.Scheme it makes with --activations."""
    import dataclasses
    from tflq import schemes
    if ACTIVATIONS.value is None:
        return SCHEME.value
    return dataclasses.replace(schemes.resolve(SCHEME.value), activations=ACTIVATIONS.value)
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.")
CALIBRATION_SAMPLES = flags.DEFINE_integer(
    "calibration_samples", 1000, "Training images used to set quantization ranges.", lower_bound=1)
KERAS_MODEL = flags.DEFINE_string(
    "keras_model", None,
    "A tf_keras model file (.h5/.keras): for `train`, a float model to train instead of "
    "--model; for `convert`, a float or tflq QAT model to convert.")
OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Output folder, written atomically: for `train`, models and metrics; "
    "for `report`, histograms and report.md.")
ALLOW_UNSAFE = flags.DEFINE_bool(
    "allow_unsafe_deserialization", False,
    "Load a --keras_model whose layers carry Python code (Lambda) or classes tflq does not "
    "know. Loading runs that code: only for a file you trust.")
