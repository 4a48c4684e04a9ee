"""``tflq demo``: Fashion-MNIST CNN, int8 and a low-bit scheme, each as FE310 firmware
run in QEMU; prints one table (tflq.demo)."""
from absl import flags

from tflq import demo
from tflq.cli import flags_common

_LOW_BIT = flags.DEFINE_string("low_bit", "log3", "The low-bit weight scheme shown beside int8 "
                               "(every weighted layer).")
_DEMO_EPOCHS = flags.DEFINE_float("demo_epochs", 3, "Float training epochs.", lower_bound=0.1)
_DEVICE_IMAGES = flags.DEFINE_integer("device_images", 100, "Test images embedded in each "
                                      "firmware and run on the device.", lower_bound=1)


def main():
    demo.run(flags_common.OUTPUT_DIR.value or "out/demo", low_bit=_LOW_BIT.value,
             epochs=_DEMO_EPOCHS.value, device_images=_DEVICE_IMAGES.value,
             overwrite=flags_common.OVERWRITE.value)
