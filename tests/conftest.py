"""Shared test fixtures: the device list (CUDA cases are marked and skipped without a GPU)
and a fixed seed per test so failures reproduce."""

import zlib

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed(request):
    # A fresh random draw per test, reproducible from the test's name.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
