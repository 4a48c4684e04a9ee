"""Mutated flatbuffers through the firmware stage's entrance (benchmarks/fuzz_flatbuffers.py,
the short form of its committed 3,000-mutant table): none ends in a traceback or a crash."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import fuzz_flatbuffers  # noqa: E402

pytestmark = [pytest.mark.firmware, pytest.mark.usefixtures("firmware_tools")]


def test_300_mutants_give_no_traceback_and_no_crash():
    result = fuzz_flatbuffers.run(300, seed=1)
    counts = result["counts"]
    assert counts["traceback"] == 0 and counts["crash"] == 0, result["examples"]
    assert sum(counts.values()) == 300
    # The entrance does the refusing, and some mutants still make valid models.
    assert counts["refused at read"] > 150 and counts["accepted"] > 0, counts
