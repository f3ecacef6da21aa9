"""Local response normalisation within each column (paper, section 3.3).

    b_i = a_i / (k + alpha/n * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta

with k=2, n=5, alpha=1e-4, beta=0.75. alpha is divided by n, as cuda-convnet2,
Caffe and torch.nn.LocalResponseNorm do (the paper's printed formula does not).
The sum runs over the maps of one column only (N = 48 after conv1, 128 after
conv2): cuda-convnet normalised on each GPU separately, so `groups=2` splits the
channels into two columns that never see each other.

Why not torch.nn.LocalResponseNorm: it has no groups (a per-column reshape
copies channels_last tensors), and its pad + avg_pool3d + autograd chain is
slower: fwd+bwd at (128, 96, 55, 55) on a 2-core CPU took 1.7 s for torch's
module applied per column, 0.52 s here. The hand-written backward keeps few
intermediates and works in place where it can, because on the CPU a fresh
150 MB tensor costs more (page faults) than the arithmetic on it. The result is the same to float rounding
(tests/test_model.py checks it against the formula and against torch's module).

The arithmetic runs in float32 (or float64 for float64 input) whatever the
input dtype: in bf16, k + alpha/n*sum would round to 2.0 and the normalisation
would vanish. Only the window sum itself may run in bf16 (a conv under CUDA
autocast), which rounds the sum, not k + alpha/n*sum.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _band(
    channels: int, groups: int, before: int, after: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(C, C, 1, 1) weight of a 1x1 conv summing channels [i-before, i+after] of i's own group."""
    i = torch.arange(channels, device=device)
    group = i // (channels // groups)
    d = i[None, :] - i[:, None]
    return ((d >= -before) & (d <= after) & (group[None, :] == group[:, None])).to(dtype)[:, :, None, None]


def _window_sum(x: torch.Tensor, groups: int, before: int, after: int, by_conv: bool | None = None) -> torch.Tensor:
    """Sum of x (N, C, H, W) over channels [i-before, i+after] within each group, zero outside.

    On CUDA a 1x1 convolution with a banded weight: one tensor-core GEMM in
    any memory format (on an H200 the whole model ran at 15,900 img/s in bf16 +
    channels_last with it, 12,500 with the shifted adds, whose strided
    kernels are slow). On the CPU shifted in-place adds, which allocate once.
    """
    if by_conv is None:
        by_conv = x.is_cuda
    if by_conv:
        return F.conv2d(x, _band(x.shape[1], groups, before, after, x.device, x.dtype)).to(x.dtype)
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w)  # no copy in either memory format
    s = x.clone()
    for d in range(1, before + 1):
        s[:, :, d:] += x[:, :, :-d]
    for d in range(1, after + 1):
        s[:, :, :-d] += x[:, :, d:]
    return s.view(n, c, h, w)


class _LRNFunction(torch.autograd.Function):
    """b = a * s^-beta, s = k + alpha/n * window_sum(a^2)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, groups: int, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        a32 = a.to(torch.promote_types(a.dtype, torch.float32))
        sq = a32 * a32
        s = _window_sum(sq, groups, size // 2, (size - 1) // 2).mul_(alpha / size).add_(k)
        # reuse sq's memory (see the module docstring); not pow(out=sq): with a
        # channels_last sq, out= breaks torch.compile's graph
        scale = sq.copy_(s).pow_(-beta)
        ctx.save_for_backward(a, s, scale)
        ctx.consts = groups, size, alpha, beta
        return (a32 * scale).to(a.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # db_j/da_i = scale_i [i=j] - 2 alpha beta / n * a_i * a_j scale_j / s_j  (i in the window of j)
        a, s, scale = ctx.saved_tensors
        groups, size, alpha, beta = ctx.consts
        a32, g = a.to(s.dtype), grad.to(s.dtype)
        g_scale = g * scale
        t = (g_scale * a32).div_(s)
        t = _window_sum(t, groups, (size - 1) // 2, size // 2)  # the transposed window
        da = t.mul_(a32).mul_(-2 * alpha * beta / size).add_(g_scale)
        return da.to(a.dtype), None, None, None, None, None


class LocalResponseNorm(nn.Module):
    """LRN across channels, separately within each of `groups` equal channel blocks."""

    # paper, section 3.3: k=2, n=5, alpha=1e-4, beta=0.75
    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, groups: int = 1) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LRNFunction.apply(x, self.groups, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"
