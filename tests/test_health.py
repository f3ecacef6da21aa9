"""The paper's recipe details and the training health monitor (pipeline/health.py).

Weight decay on weights only, float32 logits under bf16, the paper's dropout,
the warm-up option, the per-layer figures, and the warnings: they fire on a
constructed exploding run and a constructed flat run, and stay silent on a
learning one.
"""

from __future__ import annotations

import math

import pytest
import torch

from model.alexnet import AlexNet, PaperDropout
from pipeline.devices import Dist
from pipeline.health import HealthMonitor, LossWatch
from pipeline.train import TrainConfig, fit, make_loaders, make_optimizer

from helpers import CLASSES, SMALL, load_independent_warnings, metrics_rows


@pytest.mark.unit
def test_weight_decay_on_weights_only():
    model = AlexNet(num_classes=10, width=0.125)
    opt = make_optimizer(model, TrainConfig(weight_decay=5e-4))
    decayed, kept = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 5e-4 and kept["weight_decay"] == 0.0
    assert {names[id(p)].rsplit(".", 1)[1] for p in decayed["params"]} == {"weight"}
    assert {names[id(p)].rsplit(".", 1)[1] for p in kept["params"]} == {"bias"}
    assert len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))
    # a step with a zero gradient moves the weights (decay) but not the biases
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == n.endswith("bias"), n
    everything = make_optimizer(model, TrainConfig(decay="all")).param_groups
    assert len(everything) == 1 and everything[0]["weight_decay"] == 5e-4


@pytest.mark.unit
def test_logits_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = AlexNet(num_classes=1000, width=0.125, dropout=0.0).eval()
    seen = {}
    model.observer = lambda name, t: seen.setdefault(name, t.detach().clone())
    x = torch.randn(2, 3, 224, 224) * 60
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.float32 and seen["fc7"].dtype == torch.bfloat16
    # the fc8 product itself in float32, from fc7's bf16 output
    ref = torch.nn.functional.linear(seen["fc7"].float(), model.fc8.weight, model.fc8.bias)
    torch.testing.assert_close(logits, ref, rtol=1e-6, atol=1e-6)
    # bf16 logits would tie: 1000 classes in 8 mantissa bits
    as_bf16 = ref.bfloat16()
    assert len(torch.unique(as_bf16[0])) < len(torch.unique(logits[0])) == 1000


@pytest.mark.unit
def test_paper_dropout_scales_at_test_not_in_training():
    torch.manual_seed(0)
    drop = PaperDropout(0.5)
    x = torch.ones(100_000)
    y = drop(x)
    assert set(y.unique().tolist()) == {0.0, 1.0} and abs(y.mean().item() - 0.5) < 0.01  # kept units unscaled
    drop.eval()
    assert torch.equal(drop(x), x * 0.5)
    inverted = torch.nn.Dropout(0.5)
    assert set(inverted(x).unique().tolist()) == {0.0, 2.0}  # what torch does instead


@pytest.mark.unit
def test_health_figures_are_the_layers_statistics():
    torch.manual_seed(0)
    model = AlexNet(num_classes=10, width=0.125)
    opt = make_optimizer(model, TrainConfig(lr=0.01))
    seen = {}
    monitor = HealthMonitor(model)
    observe = model.observer
    model.observer = lambda name, t: (seen.setdefault(name, t.detach().clone()), observe(name, t))
    x, y = torch.randn(4, 3, 224, 224) * 60, torch.randint(0, 10, (4,))
    monitor.arm()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    h = monitor.collect(opt)
    # the monitor sums in float32 (cheap on a GPU); over ~1e5-1e6 values that is good to ~1e-6
    # relative, and std = sqrt(E[x^2] - mean^2) loses a few more digits: 1e-4 bounds it
    for name in ("conv1", "conv5", "fc7"):
        assert h[name]["dead"] == pytest.approx((seen[name] == 0).double().mean().item())
        assert h[name]["act_std"] == pytest.approx(seen[name].double().std(unbiased=False).item(), rel=1e-4)
    assert h["fc8"]["act_std"] == pytest.approx(seen["fc8"].double().std(unbiased=False).item(), rel=1e-4)
    w = model.fc8.weight
    buf_w, buf_b = opt.state[w]["momentum_buffer"], opt.state[model.fc8.bias]["momentum_buffer"]
    update = 0.01 * math.sqrt(buf_w.square().sum().item() + buf_b.square().sum().item())
    norm = math.sqrt(w.square().sum().item() + model.fc8.bias.square().sum().item())
    assert h["fc8"]["update_ratio"] == pytest.approx(update / norm, rel=1e-5)
    # an unarmed step records nothing and costs nothing
    seen.clear()
    model(x)
    assert monitor.sums == {}
    model.observer = observe
    monitor.remove()
    assert model.observer is None


@pytest.mark.unit
def test_loss_watch_warnings():
    watch = LossWatch(10, flat_after=5)
    chance = math.log(10)
    learning = [2.5, 2.3, 2.1, 1.8, 1.5, 1.2, 0.9]
    assert [w for s, l in enumerate(learning, 1) for w in watch.check_loss(s, l)] == []
    watch = LossWatch(10, flat_after=5)
    flat = [chance + 0.01 * (-1) ** s for s in range(1, 9)]
    kinds = [k for s, l in enumerate(flat, 1) for k, _ in watch.check_loss(s, l)]
    assert kinds == ["flat"]  # once, at step 5
    watch = LossWatch(10, flat_after=5)
    exploding = [2.4, 3.0, 11.2, 18.4, 23.8, 16.0]  # the paper's recipe with torch's dropout on the demo
    kinds = [(s, k) for s, l in enumerate(exploding, 1) for k, _ in watch.check_loss(s, l)]
    assert kinds == [(3, "explosion")]


def _fit(data, tmp_path, **over):
    from pipeline.checkpoint import build_model

    cfg = TrainConfig(**{**SMALL, "epochs": 2, **over})
    torch.manual_seed(0)
    model = build_model(cfg.model_config(CLASSES), ["cpu"])
    train_loader, eval_loader = make_loaders(cfg, data["manifest"], data["pca"], data["mean_image"], Dist(), "cpu")
    return fit(model, train_loader, eval_loader, cfg, tmp_path, CLASSES)


@pytest.mark.integration
def test_monitor_silent_on_a_learning_run(reference_training):
    out, summary = reference_training
    assert load_independent_warnings(summary["warnings"]) == []
    health = [r["health"] for r in metrics_rows(out) if "health" in r]
    assert len(health) == 36  # log_every 1: every step
    assert set(health[0]) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
    assert {"act_mean", "act_std", "dead", "grad_norm", "update_ratio"} == set(health[0]["fc7"])


@pytest.mark.integration
def test_monitor_warns_on_a_flat_run(train_data, tmp_path):
    summary = _fit(train_data, tmp_path, lr=1e-12, flat_after=6)  # the weights barely move: the loss stays at ln 4
    warnings = load_independent_warnings(summary["warnings"])
    assert [w["kind"] for w in warnings] == ["flat"] and warnings[0]["step"] == 6
    marks = load_independent_warnings([r for r in metrics_rows(tmp_path) if "warning" in r])
    assert [(r["warning"], r["step"]) for r in marks] == [("flat", 6)]


@pytest.mark.integration
def test_monitor_warns_on_an_exploding_run(train_data, tmp_path):
    summary = _fit(train_data, tmp_path, lr=3.0, flat_after=10**6)  # 300x the recipe's lr: finite but exploding
    warnings = load_independent_warnings(summary["warnings"])
    loss = [w for w in warnings if w["kind"] != "dead"]
    assert loss and loss[0]["kind"] == "explosion", summary["warnings"]
    assert "above 2 x ln(4)" in loss[0]["message"]
    # and its fully connected layers die within the first epoch, which the dead warning says
    dead = [w for w in warnings if w["kind"] == "dead"]
    assert len(dead) == 1 and dead[0]["epoch"] == 1 and "fc7" in dead[0]["message"], summary["warnings"]
    assert "train.init" in dead[0]["message"]


@pytest.mark.integration
def test_a_run_still_at_chance_after_stall_after_steps_stops_and_says_why(train_data, tmp_path):
    from pipeline.training.log import TrainingStalled

    with pytest.raises(TrainingStalled) as stop:
        _fit(train_data, tmp_path, lr=1e-9, stall_after=5, log_every=2)  # windows end at 2, 4, 6: judged at 6
    message = str(stop.value)
    assert message.startswith("training stalled: at step 6 (epoch 1)"), message
    assert "ln(4) = 1.386" in message and "fc6" in message and "fc7" in message and "dead" in message
    assert "train.init" in message and "train.lr" in message and "train.stall_after: 0" in message
    marks = [r for r in metrics_rows(tmp_path) if r.get("warning") == "stall"]
    assert [r["step"] for r in marks] == [6] and not (tmp_path / "train.json").exists()


@pytest.mark.integration
def test_a_learning_run_is_not_stopped_by_stall_after(train_data, tmp_path):
    # the second epoch's window (steps 13-24) holds step 24; its mean loss is 1.16, below ln(4) - 0.1
    summary = _fit(train_data, tmp_path, init="width_scaled", stall_after=24, log_every=12)
    windows = [r["train_loss"] for r in metrics_rows(tmp_path) if "train_loss" in r]
    assert windows[1] < 1.386 - 0.1 and summary["steps"] == 24
    assert "stall" not in [w["kind"] for w in summary["warnings"]]


@pytest.mark.unit
def test_chance_is_an_absolute_margin_around_ln_classes():
    from pipeline.health import at_chance

    assert at_chance(6.90, 1000) and at_chance(6.95, 1000)
    assert not at_chance(6.6, 1000)  # leaving: 0.3 below ln(1000) (5% of ln(1000) called it flat)
    watch = LossWatch(1000, flat_after=1)
    assert watch.check_loss(5, 6.6) == [] and [k for k, _ in watch.check_loss(6, 6.9)] == ["flat"]
    assert not watch.stalled(1, 20, 6.6, stall_after=10) and watch.stalled(1, 20, 6.9, stall_after=10)
    assert not watch.stalled(21, 40, 6.9, stall_after=10)  # judged once, in the window holding step 10
    assert not watch.stalled(1, 20, 6.9, stall_after=0)


@pytest.mark.integration
def test_warmup_ramps_the_lr(train_data, tmp_path):
    _fit(train_data, tmp_path, warmup_steps=4)
    lrs = [r["lr"] for r in metrics_rows(tmp_path) if "train_loss" in r][:6]
    assert lrs == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])
    epochs = [r["lr"] for r in metrics_rows(tmp_path) if "val_top1_err" in r]
    assert epochs == pytest.approx([0.01, 0.01])


@pytest.mark.integration
def test_update_ratio_under_warmup_is_the_step_taken(train_data, tmp_path):
    """The first step's gradient and momentum are the same with and without warm-up; with warm-up
    SGD moves by lr/4 of it, and the monitor must say so (not report the full lr's step)."""
    ratios = {}
    for warmup in (0, 4):
        out = tmp_path / f"warmup{warmup}"
        _fit(train_data, out, warmup_steps=warmup, epochs=1)
        first = next(r for r in metrics_rows(out) if "health" in r)
        assert first["step"] == 1
        ratios[warmup] = {layer: h["update_ratio"] for layer, h in first["health"].items()}
    for layer in ("conv1", "fc7", "fc8"):
        assert ratios[4][layer] / ratios[0][layer] == pytest.approx(0.25, rel=0.02), layer
