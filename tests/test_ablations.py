"""The ablations of the paper's sections 3-4 and 7 as config keys (docs/ablations.md).

Krizhevsky, Sutskever & Hinton, NIPS 2012. Each key changes the network or the
training images as the paper describes, defaults to the paper's setting, is
validated by the config check, reaches the train stage's CLI, and keeps a
variant's checkpoints apart from the base run's. CPU only; small widths except
where the paper's parameter count is the point.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from model.alexnet import AlexNet, PaperDropout, count_parameters
from model.lrn import LocalResponseNorm
from pipeline.config_check import ConfigError, check
from pipeline.schema import AUGMENT_SETTINGS, defaults
from pipeline.train import MODEL_KEYS, TrainConfig, parse_args
from pipeline.training.run_folder import plan_start

from helpers import REPO

pytestmark = pytest.mark.unit

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def small(**kw) -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(**{"num_classes": 10, "width": 0.125, **kw})


def conv_shapes(model: AlexNet) -> dict[str, tuple[int, int, int]]:
    """(in channels, out channels, groups) of each conv layer kept, in the first column module."""
    col = model.columns[0]
    convs = {name: getattr(col, name) for name in LAYERS[:5]}
    return {n: (c.in_channels, c.out_channels, c.groups) for n, c in convs.items() if isinstance(c, torch.nn.Conv2d)}


def unbiased(model: AlexNet) -> AlexNet:
    """The model with zero biases, so every layer's inputs take both signs (the paper's init gives
    conv2, conv4, conv5, fc6 and fc7 a bias of 1, section 5)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    return model


def observed(model: AlexNet, x: torch.Tensor = X) -> dict[str, torch.Tensor]:
    """Each layer's output after its nonlinearity, as the health monitor's observer sees it."""
    seen: dict[str, torch.Tensor] = {}
    model.observer = lambda name, t: seen.__setitem__(name, t.detach().clone())
    with torch.no_grad():
        model.eval()(x)
    model.observer = None
    return seen


# ---------------------------------------------------------------- section 3.2: columns


def test_two_column_net_is_the_papers_and_unchanged():
    assert count_parameters(AlexNet(columns=2)) == 60_965_224
    assert conv_shapes(AlexNet(columns=2)) == {
        "conv1": (3, 96, 1),
        "conv2": (96, 256, 2),  # grouped: each column's 128 kernels read its own 48 maps
        "conv3": (256, 384, 1),  # section 3.2: layer 3 reads all kernel maps of layer 2
        "conv4": (384, 384, 2),
        "conv5": (384, 256, 2),
    }


def test_one_gpu_net_has_half_the_kernels_in_conv1_to_conv4_and_the_footnotes_count():
    # Section 3.2 and footnote 2: half the kernels in each convolutional layer, but conv5 and the
    # fully connected layers at full size; one column, so every layer reads all of the previous one.
    #   conv1  48 x 3   x 11 x 11 + 48   =     17,472
    #   conv2 128 x 48  x 5 x 5   + 128  =    153,728
    #   conv3 192 x 128 x 3 x 3   + 192  =    221,376
    #   conv4 192 x 192 x 3 x 3   + 192  =    331,968
    #   conv5 256 x 192 x 3 x 3   + 256  =    442,624
    #   fc6  4096 x 9216 + 4096          = 37,752,832   (9216 = 256 x 6 x 6)
    #   fc7  4096 x 4096 + 4096          = 16,781,312
    #   fc8  1000 x 4096 + 1000          =  4,097,000
    #   total                            = 59,798,312   (the two-column net: 60,965,224)
    m = AlexNet(columns=1)
    assert count_parameters(m) == 59_798_312
    assert conv_shapes(m) == {
        "conv1": (3, 48, 1),
        "conv2": (48, 128, 1),
        "conv3": (128, 192, 1),
        "conv4": (192, 192, 1),
        "conv5": (192, 256, 1),
    }
    col = m.columns[0]
    assert (col.fc6.in_features, col.fc6.out_features, col.fc7.out_features) == (9216, 4096, 4096)
    assert m.lrn.groups == 1  # one column: LRN over all of its maps
    assert m.state_dict()["conv2.weight"].shape == (128, 48, 5, 5)


def test_one_gpu_net_at_small_width_and_on_one_device_only():
    m = small(columns=1)
    assert conv_shapes(m) == {
        "conv1": (3, 6, 1),
        "conv2": (6, 16, 1),
        "conv3": (16, 24, 1),
        "conv4": (24, 24, 1),
        "conv5": (24, 32, 1),
    }
    assert m(X).shape == (2, 10)
    with pytest.raises(ValueError, match="one-GPU net"):
        small(columns=1, devices=["cpu", "cpu"])
    with pytest.raises(ValueError, match="columns"):
        small(columns=3)


# ---------------------------------------------------------------- section 3.1: tanh


@pytest.mark.parametrize("kw", [{}, {"columns": 1}, {"drop_conv": 3}, {"devices": ["cpu", "cpu"]}])
def test_tanh_replaces_every_relu_and_the_monitor_still_sees_each_layer(kw):
    relu, tanh = observed(unbiased(small(**kw))), observed(unbiased(small(activation="tanh", **kw)))
    kept = [n for n in LAYERS if not (kw.get("drop_conv") and n == f"conv{kw['drop_conv']}")]
    assert list(tanh) == list(relu) == [*kept, "fc8"]
    for name in kept:
        assert relu[name].min() >= 0
        t = tanh[name]
        assert t.min() < 0 and t.abs().max() < 1, name  # negative inputs kept, squashed into (-1, 1)
        assert (t == 0).float().mean() < 0.01, name  # no ReLU zeroing
    with pytest.raises(ValueError, match="activation"):
        small(activation="sigmoid")


def test_tanh_output_is_tanh_of_the_pre_activation():
    m = small(activation="tanh").eval()
    pre = {}
    col = m.columns[0]
    col.fc7.register_forward_hook(lambda mod, i, o: pre.__setitem__("fc7", o.detach().clone()))
    after = observed(m)
    assert torch.allclose(after["fc7"], torch.tanh(pre["fc7"]))


# ---------------------------------------------------------------- sections 3.3, 3.4, 4.2


@pytest.mark.parametrize("overlapping_pool, kernel", [(True, 3), (False, 2)])
def test_pooling_windows_and_the_map_sizes_that_follow(overlapping_pool, kernel):
    m = small(overlapping_pool=overlapping_pool)
    assert (m.pool.kernel_size, m.pool.stride) == (kernel, 2)
    sizes = []
    m.pool.register_forward_hook(lambda mod, i, o: sizes.append(o.shape[-1]))
    m.columns[0].conv1.register_forward_hook(lambda mod, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        assert m(X).shape == (2, 10)
    assert sizes == [55, 27, 13, 6]  # either way at 224 input (section 3.4's z=3 s=2 and z=s=2)
    assert m.feature_size == 6
    # from 57-pixel maps the two part: 28 -> 13 with z=3 s=2, 28 -> 14 with z=s=2
    pool = torch.nn.MaxPool2d(kernel, 2)
    assert pool(pool(torch.zeros(1, 1, 57, 57))).shape[-1] == (13 if overlapping_pool else 14)


def test_lrn_present_or_absent():
    assert isinstance(small().lrn, LocalResponseNorm) and small().lrn.groups == 2
    assert isinstance(small(lrn=False).lrn, torch.nn.Identity)
    assert small(lrn=False)(X).shape == (2, 10)


def test_dropout_probability_and_none():
    assert isinstance(small().dropout, PaperDropout) and small().dropout.p == 0.5
    assert small(dropout=0.3).dropout.p == 0.3
    m = small(dropout=0.0).train()
    with torch.no_grad():
        assert torch.equal(m(X), m(X))  # nothing random left in a training forward pass
        assert torch.equal(m(X), m.eval()(X))  # and test time is the same function


# ---------------------------------------------------------------- section 7: depth


@pytest.mark.parametrize("columns", [2, 1])
@pytest.mark.parametrize("drop_conv", [3, 4])
def test_removing_a_middle_conv_layer(drop_conv, columns):
    m = small(drop_conv=drop_conv, columns=columns)
    assert isinstance(getattr(m.columns[0], f"conv{drop_conv}"), torch.nn.Identity)
    assert not any(k.startswith(f"conv{drop_conv}.") for k in m.state_dict())
    assert m(X).shape == (2, 10)
    shapes = conv_shapes(m)
    assert f"conv{drop_conv}" not in shapes
    half = 2 // columns  # the two-column net's maps per layer over this net's
    if drop_conv == 3:  # conv4 reads conv2's maps, and both columns of them, as conv3 did
        assert shapes["conv4"] == (32 // half, 48 // half, 1)
    else:  # conv5 reads conv3's maps within each column
        assert shapes["conv5"] == (48 // half, 32, columns)


def test_removing_a_middle_layer_at_full_width_by_hand():
    # conv4 removed: 60,965,224 - (384 x 192 x 9 + 384) = 60,301,288.
    # conv3 removed: - (384 x 256 x 9 + 384) for conv3, + 384 x (256 - 192) x 9 for conv4 reading
    # both columns of conv2: 60,965,224 - 885,120 + 221,184 = 60,301,288 (the same, by coincidence).
    assert count_parameters(AlexNet(drop_conv=4)) == 60_301_288
    assert count_parameters(AlexNet(drop_conv=3)) == 60_301_288
    with pytest.raises(ValueError, match="drop_conv"):
        AlexNet(drop_conv=2)


def test_a_removed_layer_keeps_both_layouts_equal():
    torch.manual_seed(0)
    one = AlexNet(num_classes=10, width=0.125, drop_conv=3, dropout=0.0).eval()
    two = AlexNet(num_classes=10, width=0.125, drop_conv=3, dropout=0.0, devices=["cpu", "cpu"]).eval()
    two.load_state_dict(one.state_dict())
    with torch.no_grad():
        assert torch.allclose(one(X), two(X), atol=1e-5, rtol=1e-4)
    assert one.state_dict().keys() == two.state_dict().keys()


def test_the_health_monitor_works_on_every_variant():
    from pipeline.health import HealthMonitor

    for kw in ({"drop_conv": 4}, {"activation": "tanh"}, {"columns": 1}):
        m = small(**kw)
        monitor = HealthMonitor(m)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        monitor.arm()
        torch.nn.functional.cross_entropy(m(X), torch.tensor([1, 2])).backward()
        opt.step()
        figures = monitor.collect(opt)
        assert {"conv1", "conv5", "fc6", "fc7", "fc8"} <= set(figures)
        assert all(np.isfinite(v) for f in figures.values() for v in f.values())


# ---------------------------------------------------------------- the config keys


def test_train_config_takes_every_default_from_the_schema():
    train, augment = defaults("train"), defaults("augment")
    cfg = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in train:
            assert getattr(cfg, f.name) == train[f.name], f.name
        elif f.name in AUGMENT_SETTINGS:
            assert getattr(cfg, f.name) == augment[f.name], f.name
    papers = dict(activation="relu", columns=2, lrn=True, overlapping_pool=True, dropout=0.5, drop_conv=0)
    assert {k: train[k] for k in papers} == papers
    assert {k: augment[k] for k in ("crops", "flips", "lighting")} == {
        "crops": True,
        "flips": True,
        "lighting": "paper",
    }


def test_every_key_the_rule_passes_is_a_train_flag():
    """workflow/rules/common.smk train_settings: every train.* key but gpus (devices, channels_last as
    strings) and the AUGMENT_SETTINGS keys, booleans as --key / --no-key."""
    train, augment = defaults("train"), defaults("augment")
    settings = {k: v for k, v in train.items() if k not in ("gpus", "devices", "channels_last")}
    settings.update(devices="cpu", channels_last="auto", **{k: augment[k] for k in AUGMENT_SETTINGS})
    changed = dict(
        activation="tanh",
        columns=1,
        lrn=False,
        overlapping_pool=False,
        dropout=0.0,
        drop_conv=3,
        crops=False,
        flips=False,
    )
    for values in (settings, {**settings, **changed}):
        argv = ["--manifest", "m", "--pca", "p", "--mean-image", "i", "--classes", "c", "--out-dir", "o"]
        for key, value in values.items():
            flag = f"--{key.replace('_', '-')}"
            argv += ([flag] if value else [f"--no-{flag[2:]}"]) if isinstance(value, bool) else [flag, str(value)]
        args = parse_args(argv)
        for key, value in values.items():
            assert getattr(args, key) == value, key


def test_augment_stage_takes_the_new_augment_flags(monkeypatch):
    import pipeline.augment as stage

    seen = []
    monkeypatch.setattr(stage, "run_cli", lambda fn, *args: seen.append(args) or 0)
    base = ["--manifest", "m", "--pca", "p", "--mean-image", "i", "--out-dir", "o"]
    assert stage.main(base) == 0 and stage.main([*base, "--no-crops", "--no-flips"]) == 0
    assert (seen[0][4].crops, seen[0][4].flips) == (True, True)
    assert (seen[1][4].crops, seen[1][4].flips) == (False, False)


NEW = {"activation": "tanh", "columns": 1, "drop_conv": 3, "crops": False, "flips": False}
OLD = {"lrn": False, "overlapping_pool": False, "dropout": 0.0}


@pytest.mark.parametrize("key, value", [*NEW.items(), *OLD.items()])
def test_a_variant_never_continues_the_base_runs_checkpoint_nor_the_reverse(tmp_path, key, value):
    base, variant = TrainConfig().key(10), TrainConfig(**{key: value}).key(10)
    assert base != variant
    section = "augment" if key in AUGMENT_SETTINGS else "model"
    assert variant[section][key] == value and base[section][key] != value
    last = tmp_path / "last.pt"
    for ckpt_key, run_key in ((base, variant), (variant, base)):
        ckpt = {"config": {**ckpt_key, "inputs": None}, "epoch": 1, "step": 10, "uid": "u"}
        action, why = plan_start(ckpt, None, run_key, None, 5, last)
        assert action == "start" and key in why


def test_the_base_runs_key_keeps_its_old_entries_and_older_checkpoints_resume(tmp_path):
    key = TrainConfig().key(10)
    before = {  # the model key before the ablation keys joined it
        "num_classes": 10,
        "width": 1.0,
        "lrn": True,
        "overlapping_pool": True,
        "init": "paper",
        "init_gain": "source",
        "dropout": 0.5,
        "dropout_style": "paper",
    }
    assert {k: key["model"][k] for k in before} == before
    assert set(MODEL_KEYS) >= {"activation", "columns", "drop_conv"}
    old = {
        "model": before,
        "recipe": dict(key["recipe"]),
        "augment": {k: v for k, v in key["augment"].items() if k not in ("crops", "flips")},
    }
    ckpt = {"config": {**old, "inputs": None}, "epoch": 1, "step": 10, "uid": "u"}
    assert plan_start(ckpt, None, key, None, 5, tmp_path / "last.pt")[0] == "resume"
    # and such a checkpoint's model config still builds the network it was trained with
    from pipeline.checkpoint import build_model

    assert count_parameters(build_model({**before, "width": 0.125})) == count_parameters(small())


def config(**train) -> dict:
    """The default config (config.yaml holds only its deviations from the schema) with `train` set."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.setdefault("train", {}).update(train)
    cfg.setdefault("augment", {})
    return cfg


def test_the_config_check_accepts_the_keys_and_fills_in_the_papers_settings():
    cfg = config()
    check(cfg)
    assert {
        k: cfg["train"][k] for k in ("activation", "columns", "lrn", "overlapping_pool", "dropout", "drop_conv")
    } == {"activation": "relu", "columns": 2, "lrn": True, "overlapping_pool": True, "dropout": 0.5, "drop_conv": 0}
    assert (cfg["augment"]["crops"], cfg["augment"]["flips"]) == (True, True)
    variant = config(activation="tanh", columns=1, lrn=False, overlapping_pool=False, dropout=0, drop_conv=4)
    variant["augment"].update(crops=False, flips=False)
    check(variant)
    strings = config(columns="1", drop_conv="3", dropout="0.25", lrn="false")  # as --config hands them over
    check(strings)
    assert (strings["train"]["columns"], strings["train"]["drop_conv"], strings["train"]["dropout"]) == (1, 3, 0.25)
    assert strings["train"]["lrn"] is False


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("activation", "sigmoid", "config key train.activation: 'sigmoid' is not one of ['relu', 'tanh']"),
        ("columns", 4, "config key train.columns: 4 is not one of [2, 1]"),
        ("drop_conv", 2, "config key train.drop_conv: 2 is not one of [0, 3, 4]"),
        ("dropout", 1.0, "config key train.dropout: 1.0 is greater than or equal to the maximum of 1"),
        ("dropout", -0.1, "config key train.dropout: -0.1 is less than the minimum of 0"),
        ("lrn", "sometimes", "config key train.lrn: 'sometimes' is not of type 'boolean'"),
    ],
)
def test_the_config_check_names_a_bad_value(key, value, message):
    with pytest.raises(ConfigError) as e:
        check(config(**{key: value}))
    assert message in str(e.value)


def test_the_config_check_rejects_bad_augment_switches_and_the_one_gpu_net_on_two_devices():
    cfg = config()
    cfg["augment"]["crops"] = "random"
    with pytest.raises(ConfigError, match="config key augment.crops: 'random' is not of type 'boolean'"):
        check(cfg)
    with pytest.raises(ConfigError, match="train.columns: 1 is the one-GPU net") as e:
        check(config(columns=1, devices=["cuda:0", "cuda:1"]))
    assert "cuda:0, cuda:1" in str(e.value)
    check(config(columns=1, devices="cuda:0"))


# ---------------------------------------------------------------- section 4.1: crops and flips


def position_jpeg(i: int) -> bytes:
    """R = column, G = row, B = 2i + 8: a patch's offset, mirror and image read back from its pixels."""
    a = np.empty((256, 256, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = np.arange(256)[None, :], np.arange(256)[:, None], 2 * i + 8
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95, subsampling=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from pipeline.shards import ShardWriter

    path = tmp_path_factory.mktemp("ablations") / "train-00000.tar"
    with ShardWriter(path) as w:
        for i in range(24):
            w.add(f"img{i:05d}", position_jpeg(i), i % 4)
    return [str(path)]


def patches(shards, seed: int, **switches) -> list[tuple[int, int, bool]]:
    """(x offset, y offset, mirrored) of every training patch of two epochs."""
    from pipeline.loaders import AugmentSettings, TrainLoader

    identity = {"eigval": [1.0] * 3, "eigvec": np.eye(3), "mean": [0.0] * 3, "std": [1.0] * 3}
    settings = AugmentSettings(lighting="none", normalize="channel", **switches)
    loader = TrainLoader(shards, identity, 12, settings, seed=seed)
    out = []
    j = np.arange(224)
    for epoch in range(2):
        for images, _ in loader.epoch(epoch):
            for r, g, _ in images.numpy():
                mirrored = bool(r[:, 0].mean() > r[:, -1].mean())
                ox = np.median(r - (223 - j if mirrored else j)[None, :])
                oy = np.median(g - j[:, None])
                out.append((int(round(ox)), int(round(oy)), mirrored))
    return out


def test_without_crops_and_flips_every_training_patch_is_the_centre_one(shards):
    fixed = patches(shards, seed=0, crops=False, flips=False)
    assert len(fixed) == 48 and set(fixed) == {(16, 16, False)}  # the test's centre view (section 4.1)
    assert patches(shards, seed=1, crops=False, flips=False) == fixed  # whatever the seed
    flipped = patches(shards, seed=0, crops=False, flips=True)
    assert {(x, y) for x, y, _ in flipped} == {(16, 16)} and 0 < sum(m for *_, m in flipped) < 48
    cropped = patches(shards, seed=0, crops=True, flips=False)
    assert not any(m for *_, m in cropped) and len({(x, y) for x, y, _ in cropped}) > 20
    both = patches(shards, seed=0)
    assert len(set(both)) > 20 and 0 < sum(m for *_, m in both) < 48


def test_the_health_monitor_gives_a_removed_layer_no_figures():
    """train.drop_conv: the removed layer has no gradient or update to report, rather than zeros."""
    from pipeline.health import HealthMonitor

    model = small(drop_conv=3)
    monitor = HealthMonitor(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    monitor.arm()
    model(torch.randn(2, 3, 224, 224)).sum().backward()
    opt.step()
    figures = monitor.collect(opt)
    assert "conv3" not in figures and figures["conv4"]["grad_norm"] > 0
