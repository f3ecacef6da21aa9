"""The two-column AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012, section 3).

    conv1  96 11x11/4 pad 2   224 -> 55   ReLU, LRN, max-pool 3/2 -> 27
    conv2 256  5x5    pad 2   two columns ReLU, LRN, max-pool 3/2 -> 13
    conv3 384  3x3    pad 1   reads both columns, ReLU
    conv4 384  3x3    pad 1   two columns, ReLU
    conv5 256  3x3    pad 1   two columns, ReLU, max-pool 3/2 -> 6
    fc6  4096 (reads both columns), fc7 4096 (reads both): ReLU, dropout 0.5
    fc8  num_classes

60,965,224 parameters at 1000 classes (Caffe's bvlc_alexnet has the same
count; the ungrouped network has 62,378,344). LRN (model/lrn.py) normalises
within each column, as cuda-convnet did on each GPU. The variants the paper
measures against it (sections 3.1-3.4, 4.2, 7) are options below, each
defaulting to the paper's network (docs/ablations.md).

Layouts. `devices=None` or one device: one set of grouped layers (conv2, conv4,
conv5 each one convolution of two groups), the fast path on one GPU or CPU.
`devices=[d0, d1]`: the paper's split (section 3.2): each column's half of
every layer lives on its own device (conv1 too: 48 kernels each, reading the
whole image) and activations cross devices only at conv3, fc6, fc7 and fc8.
fc8 and the logits are on d0. Both layouts expose the same state_dict (keys
and shapes of the grouped layout, as in Caffe: conv2.weight is (256, 48, 5, 5),
rows 0-127 belonging to the first column), so a checkpoint saved from one
loads into the other and gives the same outputs. Optimizer state does not
move between layouts (their parameter lists differ).

Options:
    width            scales every layer's channels and the fc6/fc7 width (kept
                     even so they split in two columns; fc8 is num_classes);
                     1.0 is the paper's network, smaller runs tests and demos.
    activation="tanh"
                     tanh in place of every ReLU (conv1-conv5, fc6, fc7); section
                     3.1 trained a four-layer CIFAR-10 net to 25% training error
                     six times faster with ReLUs.
    columns=1        the one-GPU net of section 3.2 (+1.7% top-1 error): "half
                     as many kernels in each convolutional layer", except that
                     footnote 2 keeps the last convolutional layer and the fully
                     connected layers at full size ("The one-GPU net actually has
                     the same number of kernels as the two-GPU net in the final
                     convolutional layer ... we did not halve the size of the
                     final convolutional layer (nor the fully-connected layers
                     which follow)"). So conv1-conv4 have one column's kernels
                     (48, 128, 192, 192), conv5 256, fc6 and fc7 4096, and every
                     layer sees all of the previous one (no groups): 59,798,312
                     parameters at 1000 classes (tests/test_ablations.py sums it
                     by hand). It runs on one device.
    drop_conv=3|4    remove conv3 or conv4 (section 7: removing any of the middle
                     layers costs about 2% top-1). The next layer reads what the
                     removed one read and keeps its own kernel count: without
                     conv4, conv5 reads conv3's 384 maps (grouped, as before);
                     without conv3, conv4 reads conv2's 256 maps and takes over
                     conv3's place as the layer where the columns meet (section
                     3.2), so it reads both columns. conv1, conv2 and conv5 are
                     not offered: each carries pooling (and conv1/conv2 LRN), so
                     removing one changes more than a layer (fc6's input size, or
                     two pools in a row), a choice the paper does not describe.
                     The removed layer's name holds an nn.Identity (no
                     parameters), so code walking conv1..conv5 still finds it.
    lrn=False        drop both LRN layers (paper, section 3.3: +1.4% top-1 error).
    overlapping_pool=False
                     pool 2/2 instead of 3/2 (section 3.4: +0.4% top-1 error).
                     At 224 input the sizes stay 55/27/13/6; fc6's input size is
                     computed from the pooling either way.
    init="paper"     weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6,
                     fc7, 0 elsewhere (section 5).
    init="caffe"     Caffe's bvlc_alexnet fillers: those biases 0.1, and fc6/fc7
                     weights N(0, 0.005); Caffe reported a flat loss with 1.
    init="cuda_convnet2"
                     Krizhevsky's released two-column config: the paper's, but
                     N(0, 0.03) in conv3, conv4, conv5 (sources quoted at INITS).
    init_gain="width"
                     any init's std / sqrt(width) where the fan-in scales with
                     the width (as "width_scaled" does for the paper's), so a
                     narrow network keeps the full one's per-layer gain; the
                     same as "source" (the stds as printed) at width 1.0.
    init="width_scaled"
                     this project's own rescaling, not the paper's init: the
                     paper's init with the full network's per-layer gain
                     kept at any width: std 0.01/sqrt(width) in conv2..fc8,
                     whose fan-in scales with the width; identical to "paper"
                     at width 1.0. Narrow nets need it: at width 0.25 the
                     paper's std shrinks the image-dependent part of the
                     logits to ~1e-4 and the demo stays at chance
                     (bench/RESULTS-train.md).
    dropout          probability in fc6 and fc7 (section 4.2: 0.5).
    dropout_style="paper"
                     section 4.2: kept units unscaled in training, outputs
                     x(1-p) at test. "inverted": torch's nn.Dropout (kept
                     units x 1/(1-p) in training, identity at test).

Random initial weights are drawn on the CPU in the grouped layout, so one
seed gives the same network in either layout and on any device.

Speed (bench/model_speed.py, bench/RESULTS-model.md). Works with
`model.to(memory_format=torch.channels_last)`, bf16 autocast, torch.compile
(no graph breaks) and DistributedDataParallel (`DDP(model)` for one device,
`DDP(model, device_ids=None)` for a two-device replica; torchrun starts one
process per replica). On CUDA the grouped convs run as dense convs with a
block-diagonal weight and the LRN window sum as a 1x1 conv: on an H200, fwd+bwd
at batch 128 went from 9,000 to 16,000 img/s in bf16 + channels_last and from
9,000 to 11,000 in fp32 (the ungrouped, LRN-free baseline: 26,000 and 14,000).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from model.lrn import LocalResponseNorm

# The observer's signature: (layer name, activation after its ReLU, or the logits for "fc8").
Observer = Callable[[str, torch.Tensor], None]

INPUT_SIZE = 224
SPLIT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")  # fc8 is not split
# The inits side by side, one row per source (the formatter would give one line per layer).
# paper: section 5, "We initialized the weights in each layer from a zero-mean Gaussian
#   distribution with standard deviation 0.01. We initialized the neuron biases in the second,
#   fourth, and fifth convolutional layers, as well as in the fully-connected hidden layers,
#   with the constant 1. We initialized the neuron biases in the remaining layers with the constant 0."
# caffe: BVLC/caffe models/bvlc_alexnet/train_val.prototxt (commit 9b89154): weight_filler std 0.01
#   (lines 59, 115, 170, 204, 238, 360), 0.005 in fc6 and fc7 (lines 280, 320); bias_filler 0.1
#   in conv2, conv4, conv5, fc6, fc7 (lines 119, 208, 242, 284, 324), 0 in conv1, conv3, fc8
#   (lines 63, 174, 364). Its readme.md line 14: biases 0.1 "instead of 1 (found necessary for
#   training, as initialization to 1 gave flat loss)".
# cuda_convnet2: akrizhevsky/cuda-convnet2 layers/layers-imagenet-2gpu-model.cfg (commit 3238bf0),
#   Krizhevsky's released two-column configuration: initW=0.01 in conv1 (line 17), conv2 (73),
#   fc6 (242), fc7 (268), fc8 (294); initW=0.03 in conv3 (143), conv4 (172), conv5 (200);
#   initB=1 in conv2 (74), conv4 (173), conv5 (201), fc6 (243), fc7 (269); no initB (0) elsewhere.
# fmt: off
INITS: dict[str, dict[str, tuple[float, float]]] = {
    # layer -> (weight std, bias)
    "paper": {"conv1": (0.01, 0.0), "conv2": (0.01, 1.0), "conv3": (0.01, 0.0), "conv4": (0.01, 1.0),
              "conv5": (0.01, 1.0), "fc6": (0.01, 1.0), "fc7": (0.01, 1.0), "fc8": (0.01, 0.0)},
    "caffe": {"conv1": (0.01, 0.0), "conv2": (0.01, 0.1), "conv3": (0.01, 0.0), "conv4": (0.01, 0.1),
              "conv5": (0.01, 0.1), "fc6": (0.005, 0.1), "fc7": (0.005, 0.1), "fc8": (0.01, 0.0)},
    "cuda_convnet2": {"conv1": (0.01, 0.0), "conv2": (0.01, 1.0), "conv3": (0.03, 0.0), "conv4": (0.03, 1.0),
                      "conv5": (0.03, 1.0), "fc6": (0.01, 1.0), "fc7": (0.01, 1.0), "fc8": (0.01, 0.0)},
}
# fmt: on
INITS["width_scaled"] = INITS["paper"]
INITS["paper_scaled"] = INITS["paper"]  # its earlier name, so older checkpoints still load
WIDTH_SCALED_INITS = {"width_scaled", "paper_scaled"}  # init_gain "width" implied
INIT_GAINS = (
    "source",
    "width",
)  # the source's stds as printed | std / sqrt(width) where the fan-in grows with the width
FIXED_FAN_IN = {"conv1"}  # reads the 3-channel image whatever the width


DROPOUT_STYLES = ("paper", "inverted")
ACTIVATIONS = ("relu", "tanh")  # section 3.1
COLUMN_COUNTS = (2, 1)  # section 3.2: two GPUs' columns, or the one-GPU net of its footnote 2
DROPPABLE_CONVS = (0, 3, 4)  # section 7: a middle conv layer removed; 0 keeps all five
# (kernel, stride, padding) per conv layer: kernels and strides of section 3.5; padding 2 in conv1 so 224 -> 55
CONV_SHAPES = {"conv1": (11, 4, 2), "conv2": (5, 1, 2), "conv3": (3, 1, 1), "conv4": (3, 1, 1), "conv5": (3, 1, 1)}
# section 3.2: "the kernels of layer 3 take input from all kernel maps in layer 2"; the other
# conv layers read only their own column
CROSS_COLUMN = "conv3"
NORMALISED = ("conv1", "conv2")  # followed by LRN (section 3.3) and max-pooling (3.4)
POOLED_ONLY = "conv5"  # followed by max-pooling (section 3.5)


class PaperDropout(nn.Module):
    """Dropout as in section 4.2: zero each unit with probability p while training,
    keep the others unscaled, and multiply every output by 1 - p at test time.

    torch's nn.Dropout ("inverted") instead scales the kept units by 1/(1-p) in
    training and does nothing at test time. The two give the same test-time
    function only for weights rescaled by 1-p; with the paper's init (std 0.01,
    biases 1) the inverted form doubles fc7's input to fc8 while training, so
    an fc8 update moves the logits about 4x as far (bench/RESULTS-train.md).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.p:
            return x
        if self.training:
            return x * torch.empty_like(x).bernoulli_(1 - self.p)
        return x * (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, unscaled while training, x(1-p) at test (paper, section 4.2)"


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters in a module."""
    return sum(p.numel() for p in module.parameters())


def conv_plan(ch: Sequence[int], drop_conv: int = 0) -> tuple[tuple[str, int, int, bool], ...]:
    """(layer, input maps, output maps, reads every column) of the conv layers kept, counted over
    the whole net; `ch` holds conv1..conv5's kernel counts."""
    plan, n_in, cross = [], 3, False
    for name, n_out in zip(CONV_SHAPES, ch):
        cross = cross or name == CROSS_COLUMN
        if name == f"conv{drop_conv}":
            continue  # the next layer reads this one's input, and inherits its reading both columns
        plan.append((name, n_in, n_out, cross))
        n_in, cross = n_out, False
    return tuple(plan)


class _Column(nn.Module):
    """conv1..fc7 holding `held` of the net's `total` columns.

    total=2, held=2: the two-column net on one device, the columns as groups.
    total=2, held=1: one column's half of every layer, for the two-device layout.
    total=1, held=1: the one-GPU net of section 3.2 (no groups).
    """

    def __init__(self, plan: Sequence[tuple[str, int, int, bool]], held: int, total: int, fc_in: int, fc: int) -> None:
        super().__init__()

        def part(n: int) -> int:  # this module's share of a layer's outputs
            return n * held // total

        kept = {name: (n_in, n_out, cross) for name, n_in, n_out, cross in plan}
        for name, (k, s, p) in CONV_SHAPES.items():  # in order: the parameters' order is the optimizer's
            if name not in kept:
                self.add_module(name, nn.Identity())
                continue
            n_in, n_out, cross = kept[name]
            whole = cross or name == "conv1"  # conv1: each column reads the whole image
            c_in = n_in if whole else part(n_in)
            self.add_module(name, nn.Conv2d(c_in, part(n_out), k, stride=s, padding=p, groups=1 if whole else held))
        self.fc6 = nn.Linear(fc_in, part(fc))  # fc6 and fc7 read both columns
        self.fc7 = nn.Linear(fc, part(fc))

    @property
    def device(self) -> torch.device:
        return self.fc6.weight.device


def _conv(conv: nn.Conv2d, x: torch.Tensor, dense: bool | None = None) -> torch.Tensor:
    """conv(x); a grouped conv on CUDA runs as one dense conv with a block-diagonal weight.

    Same result, twice the multiply-adds, but cuDNN's grouped kernels are slow:
    on an H200, fwd+bwd at batch 128 in bf16 + channels_last, conv4 took 2.6 ms
    grouped and 0.36 ms as an ungrouped conv of the same size (conv5 1.5 / 0.48,
    conv2 1.07 / 0.78), and the whole model ran at 10,700 img/s with grouped
    convs, 15,900 with this (fp32: 10,600 and 11,000). The CPU keeps the grouped
    conv (half the FLOPs).
    """
    if dense is None:
        dense = x.is_cuda
    if conv.groups == 1 or not dense:
        return conv(x)
    w0, w1 = conv.weight.chunk(2)  # (out/2, in/2, k, k) each; conv.groups == 2 here
    i = w0.shape[1]
    w = torch.cat([F.pad(w0, (0, 0, 0, 0, 0, i)), F.pad(w1, (0, 0, 0, 0, i, 0))])
    return F.conv2d(x, w, conv.bias, conv.stride, conv.padding)


def _both(xs: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The columns' activations side by side on one device (a cross-device copy in the split layout)."""
    if len(xs) == 1:
        return xs[0]
    return torch.cat([x.to(device) for x in xs], dim=1)


class AlexNet(nn.Module):
    """AlexNet(num_classes, width, devices, lrn, overlapping_pool, init, dropout, ..., activation, columns,
    drop_conv): see the module docstring."""

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        devices: str | torch.device | Sequence[str | torch.device] | None = None,
        lrn: bool = True,
        overlapping_pool: bool = True,
        init: str = "paper",
        dropout: float = 0.5,
        dropout_style: str = "paper",
        init_gain: str = "source",
        activation: str = "relu",
        columns: int = 2,
        drop_conv: int = 0,
    ) -> None:
        super().__init__()
        if devices is None:
            devices = []
        elif isinstance(devices, (str, torch.device)):
            devices = [devices]
        devices = [torch.device(d) for d in devices]
        if len(devices) > 2:
            raise ValueError(f"devices: at most two (one per column), got {len(devices)}")
        self.width = width
        if init_gain not in INIT_GAINS:
            raise ValueError(f"init_gain: one of {INIT_GAINS}, got {init_gain!r}")
        self.init_gain = init_gain
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: one of {ACTIVATIONS}, got {activation!r}")
        if columns not in COLUMN_COUNTS:
            raise ValueError(f"columns: one of {COLUMN_COUNTS}, got {columns!r}")
        if drop_conv not in DROPPABLE_CONVS:
            raise ValueError(f"drop_conv: one of {DROPPABLE_CONVS} (0: none), got {drop_conv!r}")
        if columns == 1 and len(devices) == 2:
            raise ValueError("columns=1 is the one-GPU net (section 3.2): give one device, not two")
        self.activation, self.column_count, self.drop_conv = activation, columns, drop_conv

        def even(n: int) -> int:
            return max(2, 2 * round(n * width / 2))

        ch = [even(n) for n in (96, 256, 384, 384, 256, 4096)]
        if columns == 1:  # section 3.2, footnote 2: half the kernels in conv1-conv4 only
            ch = [n // 2 for n in ch[:4]] + ch[4:]
        self.plan = conv_plan(ch[:5], drop_conv)

        # section 3.4: overlapping pooling, z=3 s=2; the ablation uses z=s=2
        k, s = (3, 2) if overlapping_pool else (2, 2)
        size = (INPUT_SIZE + 2 * 2 - 11) // 4 + 1  # conv1: 55
        for _ in range(3):  # after conv1, conv2, conv5; conv2-5 keep the size
            size = (size - k) // s + 1
        self.feature_size = size  # 6 with either pooling at 224 input

        n_cols = len(devices) if len(devices) == 2 else 1
        held = columns // n_cols
        self.columns = nn.ModuleList(
            _Column(self.plan, held, columns, ch[4] * size * size, ch[5]) for _ in range(n_cols)
        )
        self.fc8 = nn.Linear(ch[5], num_classes)
        # section 3.3: LRN within each column (two groups when one module holds both)
        self.lrn = LocalResponseNorm(groups=held) if lrn else nn.Identity()
        self.pool = nn.MaxPool2d(k, s)
        if dropout_style not in DROPOUT_STYLES:
            raise ValueError(f"dropout_style: one of {DROPOUT_STYLES}, got {dropout_style!r}")
        self.dropout = nn.Dropout(dropout) if dropout_style == "inverted" else PaperDropout(dropout)
        self.observer: Observer | None = None  # None: nothing extra runs

        # state_dict in the grouped layout whatever the placement
        self.register_state_dict_post_hook(_grouped_state_dict)
        self.register_load_state_dict_pre_hook(_split_state_dict)
        self.reset_parameters(init)
        if len(devices) == 2:
            for column, d in zip(self.columns, devices):
                column.to(d)
            self.fc8.to(devices[0])
        elif devices:
            self.to(devices[0])

    @property
    def column_modules(self) -> list[_Column]:
        """The column modules (one, or two in the split layout), typed: ModuleList yields plain Modules."""
        return cast("list[_Column]", list(self.columns))

    @property
    def input_device(self) -> torch.device:
        return self.column_modules[0].device

    @property
    def output_device(self) -> torch.device:
        return self.fc8.weight.device

    def reset_parameters(self, init: str = "paper") -> None:
        """Draw weights and set biases per INITS[init], in the grouped layout, on the CPU."""
        if init not in INITS:
            raise ValueError(f"init: one of {sorted(INITS)}, got {init!r}")
        state = {}
        for key, value in self.state_dict().items():
            layer, kind = key.split(".")
            std, bias = INITS[init][layer]
            scaled = init in WIDTH_SCALED_INITS or self.init_gain == "width"
            if scaled and layer not in FIXED_FAN_IN:
                std /= self.width**0.5
            state[key] = torch.randn(value.shape) * std if kind == "weight" else torch.full(value.shape, bias)
        self.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one list entry per column module; section 3.2: the columns meet only
        # where _both gathers them (conv3, fc6, fc7, fc8). Section 3.3: LRN after ReLU.
        cols, act = self.column_modules, self._activate
        xs = [x.to(c.device) for c in cols]
        for name, _, _, cross in self.plan:
            if cross:
                xs = [_both(xs, c.device) for c in cols]
            xs = [act(name, _conv(getattr(c, name), x)) for c, x in zip(cols, xs)]
            if name in NORMALISED:
                xs = [self.pool(self.lrn(x)) for x in xs]
            elif name == POOLED_ONLY:
                xs = [self.pool(x) for x in xs]
        xs = [torch.flatten(x, 1) for x in xs]
        xs = [self.dropout(act("fc6", c.fc6(_both(xs, c.device)))) for c in cols]
        xs = [self.dropout(act("fc7", c.fc7(_both(xs, c.device)))) for c in cols]
        h = _both(xs, self.output_device)
        # fc8 in float32 even under bf16 autocast: bf16 logits (8-bit mantissa)
        # tie often among 1000 classes, and a tie counts against the true class
        # in top-k (pipeline/metrics.py), so validation and best.pt would drift
        with torch.autocast(h.device.type, enabled=False):
            logits = self.fc8(h.to(self.fc8.weight.dtype))
        if self.observer is not None:
            self.observer("fc8", logits)
        return logits

    def _activate(self, layer: str, t: torch.Tensor) -> torch.Tensor:
        # section 3.1: ReLU, or the saturating tanh it was compared with
        t = torch.tanh(t) if self.activation == "tanh" else F.relu(t, inplace=True)
        if self.observer is not None:  # pipeline/health.py: per-layer activation figures
            self.observer(layer, t)
        return t


def _grouped_state_dict(module: AlexNet, state_dict: dict[str, Any], prefix: str, local_metadata: dict) -> None:
    """columns.{0,1}.conv2.weight -> conv2.weight (the columns' rows stacked, on the first column's device)."""
    n_cols = len(module.columns)
    for layer in SPLIT_LAYERS:
        for kind in ("weight", "bias"):
            if f"{prefix}columns.0.{layer}.{kind}" not in state_dict:
                continue  # a removed layer (drop_conv)
            parts = [state_dict.pop(f"{prefix}columns.{i}.{layer}.{kind}") for i in range(n_cols)]
            state_dict[f"{prefix}{layer}.{kind}"] = (
                parts[0] if n_cols == 1 else torch.cat([p.to(parts[0].device) for p in parts])
            )
    # keep the familiar order conv1..fc8
    for key in [k for k in state_dict if k.startswith(prefix + "fc8.")]:
        state_dict[key] = state_dict.pop(key)


def _split_state_dict(
    module: AlexNet,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """conv2.weight -> columns.{0,1}.conv2.weight: each column's rows, on that column's device."""
    columns = module.columns
    for layer in SPLIT_LAYERS:
        for kind in ("weight", "bias"):
            key = f"{prefix}{layer}.{kind}"
            if key not in state_dict:
                continue
            value = state_dict.pop(key)
            for i, (column, part) in enumerate(zip(columns, value.chunk(len(columns)))):
                state_dict[f"{prefix}columns.{i}.{key[len(prefix) :]}"] = part.to(column.device)
