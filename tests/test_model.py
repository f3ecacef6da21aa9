"""The two-column AlexNet (model/): sizes, LRN, layouts, init, DDP, compile.

CPU only; small widths and batches except where the paper's size is the point.
"""

import io
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from model.alexnet import SPLIT_LAYERS, AlexNet, _conv, count_parameters
from model.lrn import LocalResponseNorm, _window_sum

from helpers import assert_close_to_scale

TWO_CPUS = ["cpu", "cpu"]


def small(**kw):
    kw = {"num_classes": 10, "width": 0.125, **kw}
    return AlexNet(**kw)


def grouped_grads(model):
    """Gradients keyed like the state_dict, the columns' rows stacked."""
    grads = {f"fc8.{k}": p.grad for k, p in model.fc8.named_parameters()}
    for layer in SPLIT_LAYERS:
        for kind in ("weight", "bias"):
            parts = [getattr(getattr(c, layer), kind).grad for c in model.columns]
            grads[f"{layer}.{kind}"] = torch.cat(parts)
    return grads


# --- sizes -------------------------------------------------------------------


@pytest.mark.unit
def test_parameter_count_is_the_papers():
    assert count_parameters(AlexNet()) == 60_965_224
    assert count_parameters(AlexNet(devices=TWO_CPUS)) == 60_965_224


@pytest.mark.unit
@pytest.mark.parametrize("overlapping_pool", [True, False])
def test_spatial_sizes_and_output_shape(overlapping_pool):
    torch.manual_seed(0)
    m = AlexNet(overlapping_pool=overlapping_pool).eval()
    sizes = []
    col = m.columns[0]
    col.conv1.register_forward_hook(lambda mod, i, o: sizes.append(o.shape[-1]))
    m.pool.register_forward_hook(lambda mod, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        out = m(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()
    # conv1 55, pools 27, 13, 6 (2/2 pooling happens to give the same sizes at 224)
    assert sizes == [55, 27, 13, 6]
    assert col.fc6.in_features == 256 * 6 * 6
    assert m.pool.kernel_size == (3 if overlapping_pool else 2) and m.pool.stride == 2


@pytest.mark.unit
def test_width_keeps_counts_even_and_fc8_unchanged():
    m = AlexNet(num_classes=7, width=0.1)
    col = m.columns[0]
    outs = [
        col.conv1.out_channels,
        col.conv2.out_channels,
        col.conv3.out_channels,
        col.conv4.out_channels,
        col.conv5.out_channels,
        col.fc6.out_features,
        col.fc7.out_features,
    ]
    assert outs == [10, 26, 38, 38, 26, 410, 410]
    assert m.fc8.out_features == 7
    assert small()(torch.randn(2, 3, 224, 224)).shape == (2, 10)


@pytest.mark.unit
def test_ablation_switches():
    assert isinstance(small(lrn=False).lrn, torch.nn.Identity)
    assert isinstance(small().lrn, LocalResponseNorm)
    assert small(lrn=False, overlapping_pool=False)(torch.randn(2, 3, 224, 224)).shape == (2, 10)
    with pytest.raises(ValueError):
        small(init="xavier")
    with pytest.raises(ValueError):
        small(devices=["cpu"] * 3)


# --- LRN ---------------------------------------------------------------------


def lrn_formula(a, n=5, alpha=1e-4, beta=0.75, k=2.0):
    """Section 3.3, alpha divided by n, over the channels of a (C, H, W) array, by loops."""
    C = a.shape[0]
    b = np.empty_like(a)
    for i in range(C):
        lo, hi = max(0, i - n // 2), min(C - 1, i + n // 2)
        b[i] = a[i] / (k + alpha / n * (a[lo : hi + 1] ** 2).sum(axis=0)) ** beta
    return b


@pytest.mark.unit
def test_lrn_matches_the_formula_within_each_column():
    torch.manual_seed(0)
    # large activations, so the normalisation is far from the constant k^-beta
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64) * 60
    y = LocalResponseNorm(groups=2)(x).numpy()
    for s in range(2):
        for col in (slice(0, 8), slice(8, 16)):
            np.testing.assert_allclose(y[s, col], lrn_formula(x[s, col].numpy()), rtol=1e-12)
    # and torch's own module, applied to each column separately
    ref = torch.cat([torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x[:, c]) for c in (slice(0, 8), slice(8, 16))], 1)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-12)


@pytest.mark.unit
def test_lrn_gradient():
    torch.manual_seed(0)
    x = (torch.randn(2, 12, 3, 3, dtype=torch.float64) * 60).requires_grad_()
    assert torch.autograd.gradcheck(LocalResponseNorm(groups=2), (x,))
    # same gradient as autograd through torch's implementation
    g = torch.randn(2, 12, 3, 3, dtype=torch.float64)
    (LocalResponseNorm(groups=1)(x) * g).sum().backward()
    mine, x.grad = x.grad, None
    (torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x) * g).sum().backward()
    torch.testing.assert_close(mine, x.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.unit
def test_lrn_does_not_mix_the_columns():
    torch.manual_seed(0)
    lrn = small().lrn  # as after conv1 at full width: 96 maps, two columns of 48
    x = torch.rand(1, 96, 5, 5) * 50
    y = lrn(x)
    x2 = x.clone()
    x2[:, 48] *= 10
    y2 = lrn(x2)
    torch.testing.assert_close(y2[:, :48], y[:, :48], rtol=0, atol=0)  # channel 47 is in the other column
    assert not torch.allclose(y2[:, 49], y[:, 49])  # but it is normalised within its own
    # an LRN across all 96 maps would have changed channel 47
    z, z2 = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x), torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x2)
    assert not torch.allclose(z[:, 47], z2[:, 47])


@pytest.mark.unit
def test_lrn_window_sum_on_cuda_path_matches_cpu_path():
    # CUDA sums the window with a banded 1x1 conv, the CPU with shifted adds
    torch.manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.rand(2, 16, 3, 4).to(memory_format=fmt)
        for before, after in ((2, 2), (1, 2)):
            by_conv = _window_sum(x, 2, before, after, by_conv=True)
            by_adds = _window_sum(x, 2, before, after, by_conv=False)
            # sums of at most 5 values in [0, 1): float32 rounding, scaled to the sums
            assert_close_to_scale(by_conv, by_adds, 1e-6)
            assert by_adds[0, 8, 0, 0] == x[0, 8 : 8 + after + 1, 0, 0].sum()  # the column starts at 8


# --- layouts -----------------------------------------------------------------


@pytest.mark.unit
def test_two_device_layout_equals_grouped_layout():
    # float64: one grouped convolution and two separate ones sum in different
    # orders, which in float32 differs by machine-dependent roundings (up to
    # 5% of a small gradient element); in float64 the layouts agree to ~1e-15
    # of each tensor's scale, so a tight tolerance still catches a wrong wiring
    torch.manual_seed(0)
    one = small(dropout=0.0).double()
    two = small(dropout=0.0, devices=TWO_CPUS).double()
    two.load_state_dict(one.state_dict())
    assert len(two.columns) == 2 and two.columns[0].conv2.groups == 1 and one.columns[0].conv2.groups == 2
    x = torch.randn(3, 3, 224, 224, dtype=torch.float64)
    y1, y2 = one(x), two(x)
    assert y1.dtype == y2.dtype == torch.float64
    assert_close_to_scale(y2, y1, 1e-12)
    y1.square().sum().backward()
    y2.square().sum().backward()
    g1, g2 = grouped_grads(one), grouped_grads(two)
    for key, g in g1.items():
        assert_close_to_scale(g2[key], g, 1e-10, msg=key)
    assert g1["conv1.weight"].abs().sum() > 0


@pytest.mark.unit
def test_two_device_layout_float32_within_rounding():
    # the layouts in the dtype training uses. Outputs and the fully connected
    # layers' gradients agree to float32 rounding of each tensor's largest
    # terms (measured: at most 3.3e-7 of the scale over 3 seeds; 1e-5 leaves
    # room for other kernels, while a wiring error is of order 1). The conv
    # gradients are not compared in float32: where two inputs of a max-pool
    # window are within a rounding of each other, the two layouts may pick
    # different winners and route that gradient elsewhere (measured: conv1's
    # gradient 4-18% of its scale apart); the float64 test above covers them.
    for seed in range(3):
        torch.manual_seed(seed)
        one, two = small(dropout=0.0), small(dropout=0.0, devices=TWO_CPUS)
        two.load_state_dict(one.state_dict())
        x = torch.randn(2, 3, 224, 224)
        y1, y2 = one(x), two(x)
        assert_close_to_scale(y2, y1, 1e-5)
        y1.square().sum().backward()
        y2.square().sum().backward()
        g1, g2 = grouped_grads(one), grouped_grads(two)
        for key in ("fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias", "fc8.weight", "fc8.bias"):
            assert_close_to_scale(g2[key], g1[key], 1e-5, msg=key)


@pytest.mark.unit
def test_block_diagonal_conv_equals_grouped_conv():
    # CUDA runs grouped convs as one dense conv with a block-diagonal weight
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 12, 3, padding=1, groups=2).double()  # float64: see the layout test
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    weights = torch.arange(12.0, dtype=torch.float64)[:, None, None]
    y_grouped = _conv(conv, x, dense=False)
    (y_grouped * weights).sum().backward()
    g_grouped, conv.weight.grad = conv.weight.grad, None
    y_dense = _conv(conv, x, dense=True)
    (y_dense * weights).sum().backward()
    assert_close_to_scale(y_dense, y_grouped, 1e-12)
    assert_close_to_scale(conv.weight.grad, g_grouped, 1e-12)


@pytest.mark.unit
def test_same_seed_same_network_in_either_layout():
    torch.manual_seed(7)
    a = small().state_dict()
    torch.manual_seed(7)
    b = small(devices=TWO_CPUS).state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.unit
@pytest.mark.parametrize("src_devices,dst_devices", [(None, TWO_CPUS), (TWO_CPUS, None)])
def test_checkpoints_move_between_layouts(src_devices, dst_devices):
    torch.manual_seed(1)
    src = small(devices=src_devices).eval().double()  # float64: the layouts' sums differ in order
    torch.manual_seed(2)
    dst = small(devices=dst_devices).eval().double()
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert list(state) == list(dst.state_dict())
    assert state["conv2.weight"].shape == (32, 6, 5, 5)  # grouped, as in Caffe: (256, 48, 5, 5) at width 1
    result = dst.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        assert_close_to_scale(dst(x), src(x), 1e-12)


@pytest.mark.unit
def test_devices_and_properties():
    m = small(devices="cpu")
    assert len(m.columns) == 1
    assert m.input_device == m.output_device == torch.device("cpu")
    two = small(devices=TWO_CPUS)
    assert two.input_device == two.output_device == torch.device("cpu")


# --- initialisation ----------------------------------------------------------


@pytest.mark.unit
def test_paper_init():
    torch.manual_seed(0)
    state = AlexNet().state_dict()
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        w = state[f"{layer}.weight"]
        assert abs(w.std().item() - 0.01) < 0.0003, layer  # conv1, the smallest, has 34,848 weights
        assert abs(w.mean().item()) < 0.0003, layer
        expected = 1.0 if layer in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0  # section 5
        assert torch.equal(state[f"{layer}.bias"], torch.full_like(state[f"{layer}.bias"], expected)), layer


@pytest.mark.unit
def test_caffe_init():
    torch.manual_seed(0)
    state = AlexNet(init="caffe", devices=TWO_CPUS).state_dict()
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        std = 0.005 if layer in ("fc6", "fc7") else 0.01  # bvlc_alexnet's gaussian fillers
        assert abs(state[f"{layer}.weight"].std().item() - std) < 0.03 * std, layer
        expected = 0.1 if layer in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(state[f"{layer}.bias"], torch.full_like(state[f"{layer}.bias"], expected)), layer


@pytest.mark.unit
def test_width_scaled_init_keeps_the_full_networks_gain():
    torch.manual_seed(0)
    full, narrow = AlexNet(init="width_scaled").state_dict(), AlexNet(width=0.25, init="width_scaled").state_dict()
    paper = AlexNet(width=0.25).state_dict()
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        assert abs(full[f"{layer}.weight"].std().item() - 0.01) < 0.0003, layer  # = paper at width 1
        std = 0.01 if layer == "conv1" else 0.01 / 0.25**0.5
        assert abs(narrow[f"{layer}.weight"].std().item() - std) < 0.05 * std, layer
        assert torch.equal(narrow[f"{layer}.bias"], paper[f"{layer}.bias"]), layer


# --- speed features ----------------------------------------------------------


@pytest.mark.unit
def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    m = small(dropout=0.0)
    x = torch.randn(2, 3, 224, 224)
    ref = m(x)
    m_cl = m.to(memory_format=torch.channels_last)
    y = m_cl(x.to(memory_format=torch.channels_last))
    # channels_last runs other float32 kernels (another summation order)
    assert_close_to_scale(y, ref, 1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = m_cl(x.to(memory_format=torch.channels_last))
    assert yb.dtype == torch.float32  # the body in bf16, fc8 in float32 (tests/test_health.py)
    yb.float().sum().backward()
    assert torch.isfinite(m.columns[0].conv1.weight.grad).all()
    torch.testing.assert_close(yb.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


@pytest.mark.integration
@pytest.mark.parametrize("devices,fast", [(None, False), (TWO_CPUS, False), (None, True)])
def test_torch_compile_traces_whole_model(devices, fast):
    # inductor takes ~40 s to compile on a 2-core CPU, so the tests trace with
    # aot_eager (same graph capture, fullgraph: no graph breaks) and
    # bench/model_speed.py --compile times inductor on a GPU.
    torch._dynamo.reset()
    torch.manual_seed(0)
    fmt = torch.channels_last if fast else torch.contiguous_format
    m = small(dropout=0.0, devices=devices).to(memory_format=fmt)
    x = torch.randn(2, 3, 224, 224).to(memory_format=fmt)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
        y, ref = compiled(x), m(x)
    # aot_eager may decompose ops into others that round differently: float32
    # rounding of the largest terms, or in bf16 a couple of its 8-bit-mantissa
    # steps (2^-8 = 0.4% each) of the largest logit
    assert_close_to_scale(y.float(), ref.float(), 1e-2 if fast else 1e-5)
    y.float().sum().backward()
    assert m.columns[0].conv1.weight.grad is not None


# --- DistributedDataParallel -------------------------------------------------


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name, devices in (("grouped", None), ("two_device", TWO_CPUS)):
            torch.manual_seed(100 + rank)  # different initial weights: DDP must broadcast rank 0's
            model = small(devices=devices)
            ddp = DistributedDataParallel(model, device_ids=None)  # a two-device model is one replica
            opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            x = torch.randn(4, 3, 224, 224)  # different data on each rank
            y = torch.randint(0, 10, (4,))
            for _ in range(2):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(ddp(x), y).backward()
                opt.step()
            torch.save(model.state_dict(), os.path.join(out_dir, f"{name}_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_ddp_ranks_stay_identical(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(100)
    start = small().state_dict()
    for name in ("grouped", "two_device"):
        r0 = torch.load(tmp_path / f"{name}_0.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"{name}_1.pt", weights_only=True)
        for key in r0:
            assert torch.equal(r0[key], r1[key]), (name, key)
        assert not torch.equal(r0["fc8.weight"], start["fc8.weight"])  # the steps changed something
