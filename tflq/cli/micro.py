"""``tflq micro``: a .tflite flatbuffer -> an FE310 TFLite-Micro project in --output_dir.

The project embeds inputs for its self-test: --inputs=x.npy, else --test_inputs
images of --dataset's test set when they fit the model's input (quantized with the
model's input scale), else one input of zero points (also --test_inputs=0). `make
qemu` prints one OUTPUT line per input and the STATS line. Errors come in this order:
not a valid model; an op or type the firmware lacks; does not fit the RAM; inputs that
do not fit the model. FC / conv layers whose weights take <= 4 bits become packed
TFLQ_PACKED ops (--pack=auto|on|off); the others run tflq's rv32 int8 kernels
(--kernels=tflq) or TFLM's reference ones (--kernels=reference). Low-bit activations
between tflq layers are stored as k-bit codes (--nopack_activations: int8) and
max-pools are fused into the convs before them (--nofuse_pools: TFLM's layout). Packed
weights are copied into RAM where it allows (--noweights_in_ram: read from flash). Where
int8 rows are faster than a layer's low-bit kernel, the layer runs on them (--choose).
The command prints how each layer was packed, or why it stays int8, and its estimate.
"""
import os

from absl import flags
import numpy as np

from tflq.converters import firmware_kernels, micro_project, packing, tflm
from tflq.converters import model as typed_model
from tflq.converters.tflite import QuantParams
from tflq import datasets, outputs
from tflq.cli import flags_common
from tflq.errors import TflqError

_TFLITE = flags.DEFINE_string("tflite", None, "The int8 .tflite flatbuffer (tflq convert writes one).")
_BOARD = flags.DEFINE_enum("board", "hifive1-revb", list(micro_project.BOARDS), "Target board.")
_INPUTS = flags.DEFINE_string(
    "inputs", None, "A .npy of inputs to embed for the self-test: int8 as they are, float "
    "quantized with the model's own input scale and zero point; shape (count, *input shape) "
    "or (count, input size). Overrides --dataset/--test_inputs.")
_TEST_INPUTS = flags.DEFINE_integer(
    "test_inputs", 32, "Test images of --dataset embedded for the self-test, when their shape "
    "is the model's input shape (0: one input of zero points, no data).", lower_bound=0)
_PACK = flags.DEFINE_enum(
    "pack", "auto", ["auto", "on", "off"],
    "Pack FC / conv layers with <= 4-bit weights into TFLQ_PACKED ops (auto: when any is "
    "eligible; on: the same, and say so when none is; off: keep every layer int8).")
_KERNELS = flags.DEFINE_enum(
    "kernels", "tflq", list(firmware_kernels.KERNEL_CHOICES),
    "int8 FC / CONV_2D / DEPTHWISE_CONV_2D kernels: tflq's rv32 ones or TFLM's reference.")


_FUSE_POOLS = flags.DEFINE_bool(
    "fuse_pools", True, "Fuse each MAX_POOL_2D into the conv before it (with --kernels=tflq): "
    "the un-pooled tensor is never stored. --nofuse_pools keeps TFLM's layout.")
_PACK_ACTIVATIONS = flags.DEFINE_bool(
    "pack_activations", True, "Store low-bit activations between tflq layers as k-bit codes "
    "in the arena. --nopack_activations keeps every activation int8.")
_WEIGHTS_IN_RAM = flags.DEFINE_bool(
    "weights_in_ram", True, "Copy packed layers' weights into the arena at start-up where "
    "the RAM left allows (CONV_2D first), so inferences do not read them from the SPI "
    "flash. --noweights_in_ram keeps them in flash.")
_CHOOSE = flags.DEFINE_enum(
    "choose", "fastest", ["fastest", "smallest"],
    "Per packed FC / conv layer, the kernel: fastest (int8 rows where they take fewer "
    "instructions than the low-bit kernel and the whole firmware's estimated cycles go "
    "down within the RAM) or smallest (the low-bit kernel wherever its weights are smaller).")


def main():
    for flag in (_TFLITE, flags_common.OUTPUT_DIR):
        if not flag.value:
            raise TflqError(f"--{flag.name} is required")
    out_dir = flags_common.OUTPUT_DIR.value
    outputs.check_free(out_dir, flags_common.OVERWRITE.value)
    path = _TFLITE.value
    if not os.path.isfile(path):
        raise TflqError(f"--tflite {path}: " + ("a directory, not a .tflite file"
                                                if os.path.isdir(path) else "no such file"))
    with open(path, "rb") as f:
        flatbuffer = f.read()
    name = os.path.basename(path)
    checked = typed_model.read(flatbuffer, name)  # not a valid model: said first
    typed_model.check_firmware_support(checked, tflm.OPS, (packing.CUSTOM_CODE,))
    inputs, note = _self_test_inputs(checked)
    pack = {"auto": None, "on": True, "off": False}[_PACK.value]
    out = micro_project.generate_project(flatbuffer, out_dir, board=_BOARD.value,
                                         test_inputs=inputs, model_name=name,
                                         overwrite=flags_common.OVERWRITE.value, pack=pack,
                                         kernels=_KERNELS.value,
                                         fuse_pools=None if _FUSE_POOLS.value else False,
                                         pack_activations=_PACK_ACTIVATIONS.value,
                                         weights_in_ram=_WEIGHTS_IN_RAM.value,
                                         choose=_CHOOSE.value)
    for line in out.packing_lines:
        print(line)
    if pack and not out.plan.packed:
        print("--pack=on: no layer has weights of <= 4 bits; the model stays int8")
    print(f"kernels: {out.plan.note}\n"
          f"inputs: {note}\n"
          f"wrote {out}: {out.budget.describe()}\n"
          f"build: make -C {out}    run in QEMU: make -C {out} qemu   (TFLQ_TFLM_ROOT: a "
          f"folder with the TFLM sources; converters.tflm.source_root() unpacks one)")


def _self_test_inputs(checked):
    """(inputs for generate_project, what they are): --inputs, else --dataset images when
    they fit the model's input, else one input of zero points."""
    tensor = checked.tensors[checked.inputs[0]]
    in_q = QuantParams(tensor.scale[0] if tensor.scale else 1.0,
                       tensor.zero_point[0] if tensor.zero_point else 0)
    want = f"(count, {', '.join(map(str, tensor.shape[1:]))}) int8, or float to quantize"
    if _INPUTS.value:
        try:
            x = np.load(_INPUTS.value, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise TflqError(f"--inputs {_INPUTS.value}: not a readable .npy file ({e})") from None
        if x.dtype.kind == "f":
            if not np.all(np.isfinite(x)):
                raise TflqError(f"--inputs {_INPUTS.value}: holds NaN or Inf")
            x = in_q.quantize(x)
        elif x.dtype != np.int8:
            raise TflqError(f"--inputs {_INPUTS.value}: {x.dtype} values; the model wants {want}")
        return x, f"{len(x)} from {_INPUTS.value}"
    if _TEST_INPUTS.value == 0:
        return None, "one input of zero points (--test_inputs=0)"
    dataset = flags_common.DATASET.value
    _, (x_test, _) = datasets.load(dataset)
    if checked.feature is not None:  # the model takes projection profiles of the images
        return _profile_inputs(checked.feature, x_test, in_q, dataset)
    sample = tuple(tensor.shape[1:]) if tensor.shape[:1] == (1,) else tuple(tensor.shape)
    if x_test.shape[1:] != sample and int(np.prod(x_test.shape[1:])) != int(np.prod(sample)):
        message = (f"--dataset={dataset} images are {'x'.join(map(str, x_test.shape[1:]))}, "
                   f"the model's input is {'x'.join(map(str, tensor.shape))}")
        if flags.FLAGS["test_inputs"].present:
            raise TflqError(f"{message}: pass --inputs=x.npy of shape {want}, or --test_inputs=0")
        return None, f"one input of zero points ({message}; pass --inputs=x.npy for real ones)"
    x = x_test[:_TEST_INPUTS.value]
    return in_q.quantize(x), f"{len(x)} test images of --dataset={dataset}"


def _profile_inputs(feature, x_test, in_q, dataset):
    """--dataset images as the int8 projection profiles the firmware's C code computes."""
    from tflq.converters import features

    images = np.rint(x_test[:_TEST_INPUTS.value, ..., 0] * 255).astype(np.uint8)
    if images.shape[1:] != (feature["height"], feature["width"]):
        message = (f"--dataset={dataset} images are {'x'.join(map(str, images.shape[1:]))}, "
                   f"the model takes the projection profiles of {feature['height']}x"
                   f"{feature['width']} images")
        if flags.FLAGS["test_inputs"].present:
            raise TflqError(f"{message}: pass --inputs=x.npy of int8 profiles, or --test_inputs=0")
        return None, f"one input of zero points ({message}; pass --inputs=x.npy for real ones)"
    x = features.int8_profiles(images, feature["bins"], in_q.scale, in_q.zero_point)
    return x, (f"{len(x)} test images of --dataset={dataset} as projection profiles "
               "(computed as micro/features/projection_profiles.c computes them)")
