"""Placement: precision, memory format and where inputs go, decided from the devices."""

from __future__ import annotations

import pytest
import torch

from pipeline.checkpoint import build_model
from pipeline.devices import Dist
from pipeline.training.placement import Placement

pytestmark = pytest.mark.unit

CONFIG = {
    "num_classes": 3,
    "width": 0.0625,
    "lrn": True,
    "overlapping_pool": True,
    "init": "caffe",
    "dropout": 0.5,
    "dropout_style": "paper",
}


def test_cpu_defaults_to_fp32_and_contiguous_inputs():
    model = build_model(CONFIG, ["cpu"])
    place = Placement(model, ["cpu"], Dist())
    assert (place.bf16, place.channels_last, place.precision) == (False, False, "fp32")
    images, labels = place.inputs(torch.zeros(2, 3, 224, 224), torch.tensor([[1], [2]], dtype=torch.int32))
    assert labels.dtype == torch.int64 and labels.shape == (2,)
    assert images.is_contiguous()
    with place.autocast():
        assert model(images).dtype == torch.float32
    assert place.wrap(model, compile=False) is model  # one replica, no compile: the module itself


def test_asked_for_bf16_and_channels_last_on_the_cpu():
    model = build_model(CONFIG, ["cpu"])
    place = Placement(model, ["cpu"], Dist(), precision="bf16", channels_last="true")
    assert place.precision == "bf16"
    images, _ = place.inputs(torch.zeros(2, 3, 224, 224), torch.zeros(2))
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert model.fc8.weight.dtype == torch.float32  # autocast, not a cast of the weights
    with place.autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
