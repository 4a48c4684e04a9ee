"""``tflq.micro``: TFLite-Micro firmware projects for the SiFive FE310.

    tflq.micro.generate_project(flatbuffer, "out/fw", board="hifive1-revb",
                                test_inputs=in_q.quantize(x_test[:32]))

The implementation is the conversion stage's (``converters.micro_project``).
"""
from tflq.converters.micro_project import BOARDS, MemoryBudget, generate_project, memory_budget  # noqa: F401
