"""TFLite flatbuffer -> a TFLite-Micro firmware project for the SiFive FE310.

The project (see templates/) holds the model as a const array in flash (or, with
``model_in_ram``, in .data, copied from flash at boot), a main.cc registering exactly
the model's ops and self-testing on embedded int8 inputs (or, with ``eval_images``,
measuring accuracy on images in flash), tflq's kernels (``firmware_kernels``: packed
low-bit ops and rv32 int8 kernels), the FE310 platform layer copied from micro/fe310,
a Makefile and a Bazel workspace that compile TFLM from $TFLQ_TFLM_ROOT. Generating
needs no cross toolchain.

The model is read and checked once at the entrance (``converters.model``). RAM is
budgeted before anything is written: tensor arena + stack + static data (+ the model
when it is in RAM) must fit the FE310's 16 KiB (``memory_budget``: with TFLM sources,
TFLM's own arena on a 32-bit target; without, an upper bound from the wheel). Where
tflq's kernels would not fit, ``ram_budget.fitting_plan`` keeps TFLM's for some op types. The
firmware's arena array is the budget's; tests/test_firmware_qemu.py checks it on the
device.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from tflq import outputs
from tflq.converters import (eval_firmware, firmware_kernels, layer_cost, packing, project_files,
                             ram_budget, tflm)
from tflq.converters import flatbuffer as fb
from tflq.converters import model as typed_model
# The budget's names, as the API (tflq.micro) and the callers know them.
from tflq.converters.ram_budget import (RAM_BYTES, MemoryBudget, memory_budget,  # noqa: F401
                                        stack_reservation)
from tflq.errors import TflqError

BOARDS = ("hifive1-revb", "hifive1-reva")
# Flash past the bootloader on the smaller board (Rev B: 4 MiB - 64 KiB), minus room
# for TFLM + picolibc + the app (about 80 KB measured).
FLASH_MODEL_LIMIT = 4 * 1024 * 1024 - 64 * 1024 - 128 * 1024


def model_ops(flatbuffer: bytes) -> list[str]:
    """Sorted names of the builtin ops the model uses (custom ops by their custom code)."""
    model = fb.load(flatbuffer)
    return sorted({fb.op_name(model, op) for sg in model.subgraphs for op in sg.operators or []})


@dataclasses.dataclass(frozen=True, eq=False)
class Project(os.PathLike):
    """What ``generate_project`` wrote and every decision behind it. It is also the
    project's path (``os.fspath(project)``, ``project / "Makefile"``)."""

    path: Path
    model_name: str
    flatbuffer: bytes  # the firmware's own (packed, when any layer was)
    plan: "firmware_kernels.KernelPlan"  # the kernel of each op type and why (plan.note)
    packing: tuple  # packing.PackedOp per FC / conv layer: packed how, or why not
    budget: MemoryBudget
    test_inputs: "np.ndarray | None"  # the self-test's embedded inputs (None: accuracy firmware)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, other) -> Path:
        return self.path / other

    def __getattr__(self, attribute):  # the rest of Path's interface: exists(), rglob(), ...
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(self.path, attribute)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def packing_lines(self) -> list[str]:
        return packing.packing_lines(self.packing)


def generate_project(flatbuffer: bytes, out_dir, target: str = "fe310",
                     board: str = "hifive1-revb", test_inputs=None,
                     overwrite: bool = False, model_name: str | None = None,
                     pack: bool | None = None, kernels: str = "tflq",
                     model_in_ram: bool = False, eval_images=None, eval_labels=None,
                     feature: str | None = None, fuse_pools: bool | None = None,
                     pack_activations: bool = True, weights_in_ram: bool = True,
                     choose: str = "fastest") -> Project:
    """Writes a TFLM firmware project for ``flatbuffer`` into ``out_dir``; returns the
    ``Project`` (its path, and every decision: kernels, packing, budget).

    ``pack``: rewrite FC / CONV_2D / DEPTHWISE_CONV_2D layers whose weights take <= 4
    bits into TFLQ_PACKED ops (``converters.packing``); None (default) packs when at
    least one layer is eligible, False never. Packing also stores low-bit activations
    between packed layers as k-bit codes (``pack_activations`` False: every activation
    stays int8) and fuses max-pools into packed layers (``converters.activation_plan``).
    ``fuse_pools`` fuses them into int8 layers too, as TFLQ_PACKED int8 rows (None, the
    default: with tflq's kernels, not with TFLM's reference ones): the demo CNN's int8
    arena goes from 9,260 to 3,164 B, with 4.8% fewer instructions. ``kernels``:
    "tflq" runs the remaining int8 FC / CONV_2D / DEPTHWISE_CONV_2D on tflq's rv32
    kernels, "reference" on TFLM's. With tflq's kernels an int8 FULLY_CONNECTED becomes
    TFLQ_PACKED int8 rows in channel groups, which its kernel reads from flash as one
    sequential stream (``packing.pack_model``'s int8_fcs; FC 128 -> 128: 2,046
    non-sequential flash loads as a builtin op, 186 packed).
    ``weights_in_ram``: where the RAM left after all that allows, packed layers' weights
    are copied into the arena at AllocateTensors (``packing.stage_in_ram``: CONV_2D
    first, which reads its rows once per output position), so an inference reads them
    from RAM and not from the FE310's slow SPI flash (``converters.flash_reads``). A
    CONV_2D whose lasting copy does not fit is staged at every Eval instead
    (``packing.stage_per_eval``): its kernel copies blocks of output channels' rows
    into scratch, which ops share, so an inference reads the blob from flash once.
    ``choose``: "fastest" (the default) picks each layer's kernel: a packed FC / CONV_2D
    whose low-bit kernel takes more instructions per MAC than int8 rows (codebooks,
    bit-planes of 2 bits and more; ``packing.slower_than_int8_rows``) is packed as int8
    rows instead (its int8 weights hold the same levels, so the outputs are the same),
    one layer at a time, the most MACs first, where the whole firmware's estimate
    (``converters.layer_cost``: instructions + 64 x flash bytes per inference, with
    where each layer's weights then fit) goes down by more than
    ``layer_cost.SWITCH_MARGIN`` of the layer's and it still fits the RAM.
    "smallest": every layer whose packed weights are smaller keeps its low-bit kernel.
    Which layers were packed, and how, why the others were not, whose weights are in
    RAM, and each packed layer's estimate, is written into the project's README.

    ``test_inputs``: int8 array (count, *input_shape) or (count, input_size) embedded for
    the self-test; None embeds one input of zero points. ``model_name`` (for comments and
    messages) defaults to the folder's name. Raises TflqError, writing
    nothing, if the model does not fit 16 KiB of RAM or ``out_dir`` exists and
    ``overwrite`` is False.

    ``model_in_ram``: place the flatbuffer in .data (crt0 copies it from flash at boot)
    instead of flash; its bytes then count against the 16 KiB RAM budget.

    Accuracy firmware (``eval_images`` given; see ``eval_firmware``): main.cc comes from
    templates/main_eval.cc and test_data.{h,cc} hold ``eval_images`` and ``eval_labels``
    in flash. ``feature`` defaults to the one the model's ``tflq_feature`` metadata
    declares (``tflq.convert`` of a model with a ProjectionProfiles first layer). With
    ``feature="projection_profiles"`` the images are raw uint8
    (count, H, W) and the firmware computes the model's int8 input with
    micro/features/projection_profiles.c (bins = input size / 4); with ``feature=None``
    they are the model's int8 inputs. It prints ``PRED k label argmax`` per image,
    ``ACCURACY correct/total`` and STATS; ``test_inputs`` is then unused.
    """
    out_dir = Path(out_dir)
    if target != "fe310":
        raise TflqError(f"unknown target {target!r}: tflq generates firmware for 'fe310' only")
    if board not in BOARDS:
        raise TflqError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    if choose not in ("fastest", "smallest"):
        raise TflqError(f"unknown choose={choose!r}: 'fastest' or 'smallest'")
    outputs.check_free(str(out_dir), overwrite, flag="overwrite=True")
    flatbuffer = bytes(flatbuffer)
    # The entrance: a valid model (one line if not), then ops and types, then the fit,
    # then the inputs.
    checked = typed_model.read(flatbuffer, model_name or out_dir.name)
    typed_model.check_firmware_support(checked, tflm.OPS, (packing.CUSTOM_CODE,))
    io = _io_tensors(checked)
    int8_flatbuffer = flatbuffer
    variant = None
    if eval_images is not None:
        if feature is None and checked.feature is not None:  # the model says what it takes
            feature = checked.feature["feature"]
        variant = eval_firmware.eval_variant(int8_flatbuffer, io, eval_images, eval_labels,
                                             feature, checked.feature)
        test_inputs = None
    elif feature is not None or eval_labels is not None:
        raise TflqError("feature and eval_labels need eval_images (the accuracy firmware)")

    def placed(b: MemoryBudget, model_bytes: int) -> MemoryBudget:
        return ram_budget.with_placement(b, model_bytes, model_in_ram,
                                         variant.static_bytes if variant else 0)

    def layout(int8_convs: bool, int8_rows=frozenset()):
        """(flatbuffer, packed ops, kernel plan, budget) with int8 CONV_2D layers as
        int8 rows (``packing.pack_model``'s int8_convs) or not, and the low-bit layers
        ``int8_rows`` as int8 rows."""
        packed, ops = int8_flatbuffer, []
        if pack is not False:
            fuse = kernels == "tflq" if fuse_pools is None else fuse_pools
            candidate, ops = packing.pack_model(int8_flatbuffer, int8_pools=fuse,
                                                pack_activations=pack_activations,
                                                int8_convs=int8_convs,
                                                int8_fcs=kernels == "tflq",
                                                int8_rows=int8_rows)
            if any(p.encoding for p in ops):
                packed = candidate
        flash_data = len(packed) + (variant.flash_bytes if variant else 0)
        if flash_data > FLASH_MODEL_LIMIT:
            raise TflqError(f"model is {len(packed)} bytes"
                            + (f" and the eval data {variant.flash_bytes}" if variant else "")
                            + f": more than the {FLASH_MODEL_LIMIT} bytes of HiFive1 flash "
                            + ("left for them" if variant else "left for it"))
        # The fastest kernel plan that fits the RAM (ram_budget.fitting_plan). Packing is
        # not undone to fit: packed ops keep their weights in flash and need less arena
        # than the int8 layers they replace where measured (ternary autoencoder 128-104:
        # 4.0 KiB packed; int8 with tflq's FC kernel 14.2 KiB, with TFLM's it fits).
        kernel_plan, budget = ram_budget.fitting_plan(
            packed, int8_flatbuffer, kernels, io.name,
            lambda b: placed(b, len(packed)).total <= RAM_BYTES)
        budget = placed(budget, len(packed))
        if weights_in_ram and not model_in_ram and budget.total <= RAM_BYTES:
            packed, ops, budget = _weights_staged(
                packed, int8_flatbuffer, kernel_plan, budget, ops, io.name,
                lambda b: placed(b, len(packed)))
        return packed, ops, kernel_plan, budget

    # tflq's int8 CONV_2D reads its rows once per output position: from RAM, not from
    # the FE310's SPI flash, where they fit. Where one does not, it stays builtin.
    staging_convs = (pack is not False and kernels == "tflq" and weights_in_ram
                     and not model_in_ram)

    def arranged(int8_rows=frozenset()):
        result = layout(staging_convs, int8_rows)
        if staging_convs and any(p.encoding == packing.INT8_ROWS_STAGED
                                 and not (p.in_ram or p.stage_channels) for p in result[1]):
            result = layout(False, int8_rows)
        return result

    flatbuffer, packed_ops, plan, budget = best = arranged()
    if choose == "fastest" and kernels == "tflq":
        rows, tried = frozenset(), set()
        while True:  # again after a switch: it may have moved weights out of RAM
            untried = [i for i in packing.slower_than_int8_rows(best[1])
                       if (rows, i) not in tried]
            for index in untried:
                tried.add((rows, index))
                try:
                    trial = arranged(rows | {index})
                except TflqError:  # int8 rows would outgrow the flash
                    continue
                [layer] = [p for p in best[1] if p.index == index]
                saved = (layer_cost.of_model(best[1]).cycles
                         - layer_cost.of_model(trial[1]).cycles)
                if (trial[3].total <= RAM_BYTES
                        and saved > layer_cost.SWITCH_MARGIN * layer.estimate.cycles):
                    best, rows = trial, rows | {index}
                    break
            else:
                break
        flatbuffer, packed_ops, plan, budget = best
    if variant is not None:
        plan = dataclasses.replace(plan, project_files={**plan.project_files,
                                                        **variant.kernel_files})
    if budget.total > RAM_BYTES and model_in_ram:
        raise TflqError(ram_budget.model_in_ram_error(io.name, budget, len(flatbuffer)))
    if budget.total > RAM_BYTES:
        measured = ("TFLM's own arena use on a 32-bit target" if budget.arena_source == "ilp32"
                    else f"an upper bound (64-bit wheel: {budget.host_arena} B)")
        raise TflqError(f"model {io.name!r} does not fit the FE310 with any kernel choice: "
                        f"{budget.describe()}. The arena is {measured}; shrink the largest "
                        "activations (fewer channels, smaller input, earlier pooling).")
    inputs = _test_inputs(test_inputs, io)
    files = project_files.render(flatbuffer, io, plan, inputs, budget, board, packed_ops,
                                 variant=variant, model_in_ram=model_in_ram)
    _write_atomically(out_dir, files, overwrite)
    return Project(out_dir, io.name, flatbuffer, plan, tuple(packed_ops), budget,
                   None if variant is not None else inputs)


def _weights_in_ram(flatbuffer, int8_flatbuffer, plan, budget, packed_ops, name, placed):
    """The flatbuffer with the packed weights that fit the RAM left marked to be copied
    into the arena, its packed ops and budget (all unchanged if none fit)."""
    left = RAM_BYTES - budget.total
    while left > 0:
        staged, ops = packing.stage_in_ram(flatbuffer, packed_ops, left)
        if not any(p.in_ram for p in ops):
            break
        staged_budget = placed(ram_budget.memory_budget(int8_flatbuffer, staged, plan, name))
        if staged_budget.total <= RAM_BYTES:
            return staged, ops, staged_budget
        left -= staged_budget.total - RAM_BYTES  # the arena grew by more than the copies
    return flatbuffer, packed_ops, budget


def _weights_staged(flatbuffer, int8_flatbuffer, plan, budget, packed_ops, name, placed):
    """Packed weights copied into RAM for good where they fit (``_weights_in_ram``), and
    the CONV_2D blobs left in flash staged at every Eval (``_weights_per_eval``). If that
    leaves a CONV_2D reading its rows from flash at every output position, the other
    order is tried too (every CONV_2D staged per Eval first: TFLM's scratch is shared
    between ops, lasting copies are not; then lasting copies in the RAM left), and the
    one leaving fewer such layers kept."""
    def unstaged(result):
        return len(packing.rereads_from_flash(result[0]))

    args = (int8_flatbuffer, plan)
    lasting = _weights_in_ram(flatbuffer, *args, budget, packed_ops, name, placed)
    first = _weights_per_eval(*lasting[:1], *args, lasting[2], lasting[1], name, placed)
    if not unstaged(first):
        return first
    per_eval = _weights_per_eval(flatbuffer, *args, budget, packed_ops, name, placed)
    second = _weights_in_ram(per_eval[0], *args, per_eval[2], per_eval[1], name, placed)
    return second if unstaged(second) < unstaged(first) else first


# Channels per staged block that _weights_per_eval tries, after all of a layer's: fewer
# take less scratch and repeat the patch (and shared tables) once per block.
STAGE_CHANNELS = (16, packing.STAGE_UNIT)


def _weights_per_eval(flatbuffer, int8_flatbuffer, plan, budget, packed_ops, name, placed):
    """The flatbuffer with the CONV_2D blobs left in flash staged into scratch at every
    Eval (``packing.stage_per_eval``): each in turn, the most flash bytes saved first,
    with the most channels per block whose measured budget fits beside those before it;
    a layer for which even ``packing.STAGE_UNIT`` do not fit stays as it is."""
    chosen = {}
    result = flatbuffer, packed_ops, budget
    for index in packing.per_eval_candidates(flatbuffer, packed_ops):
        for channels in (1 << 16) - 1, *STAGE_CHANNELS:
            fbuf, ops = packing.stage_per_eval(flatbuffer, packed_ops,
                                               {**chosen, index: channels})
            staged = placed(ram_budget.memory_budget(int8_flatbuffer, fbuf, plan, name))
            if staged.total <= RAM_BYTES:
                chosen[index] = channels
                result = fbuf, ops, staged
                break
    return result


@dataclasses.dataclass(frozen=True)
class _IO:
    name: str
    input_shape: tuple
    input_zero_point: int


def _io_tensors(model: typed_model.Model) -> _IO:
    """The input's shape and zero point (``check_firmware_support`` passed: one int8 each)."""
    inp = model.tensors[model.inputs[0]]
    return _IO(model.name, inp.shape, inp.zero_point[0] if inp.zero_point else 0)


def _test_inputs(test_inputs, io: _IO) -> np.ndarray:
    sample_shape = io.input_shape[1:] if io.input_shape[:1] == (1,) else io.input_shape
    size = int(np.prod(sample_shape))
    if test_inputs is None:
        return np.full((1, size), io.input_zero_point, np.int8)
    arr = np.asarray(test_inputs)
    if arr.dtype != np.int8:
        raise TflqError(f"test_inputs are {arr.dtype}: pass int8 (quantized) inputs")
    if arr.ndim < 1 or arr.shape[0] == 0 or arr[0].size != size:
        raise TflqError(f"test_inputs have shape {arr.shape}: expected (count, "
                        f"{', '.join(map(str, sample_shape))}) int8, count >= 1")
    return arr.reshape(arr.shape[0], size)


def _write_atomically(out_dir: Path, files: dict, overwrite: bool) -> None:
    """Writes ``files`` into a temporary sibling of ``out_dir``, then renames it into place."""
    with outputs.atomic_dir(str(out_dir), overwrite, flag="overwrite=True") as tmp:
        for rel, content in files.items():
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
