"""Training health: per-layer figures and the warnings a user needs within minutes.

Every `every` steps (the metrics window) the monitor records, per layer
(conv1..conv5, fc6, fc7; fc8 = the logits):

    act_mean, act_std   of the layer's output after its ReLU (fc8: the logits)
    dead                share of ReLU outputs that are zero in that batch
    grad_norm           L2 norm of the weight gradient (bias included)
    update_ratio        |update| / |weight|: the step SGD took, relative to the weights

On the other steps the observer returns at once, so the cost is a few
reductions over one batch's activations per window (bench/RESULTS-train.md,
"Health monitor cost"). The update is read from SGD's momentum buffer after
the step (torch's SGD moves the weights by lr * buffer), so no copy of the
weights is needed.

Warnings (`check_loss`), each given once per run, with the step and a hint:
    explosion   the window's mean loss is above `explode_factor` * ln(classes)
                (a network at init sits near ln(classes); the paper's recipe at
                full width on the demo reached 14.6 = 6.3 ln 10)
    flat        the mean loss is still at chance (`at_chance`: within
                CHANCE_MARGIN of ln(classes)) after `flat_after` steps: the
                network has not started to learn
    stall       the same after `stall_after` steps stops the run (TrainingStalled,
                pipeline/training/log.py): hours of GPU time at chance are a loss
    dead        fc6 or fc7 over DEAD_SHARE dead in the first epoch (the
                paper's init at 1000 classes: fc7 10% -> 93% dead in 400 steps)
    collapse    validation error back at chance after learning (pipeline/train.py)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def _layer_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """(layer name, module) for every column's share of each layer, and fc8."""
    out = []
    for column in getattr(model, "columns", []):
        out += [(name, getattr(column, name)) for name in LAYERS[:-1]]
    out.append(("fc8", model.fc8))
    # a layer the network does not have (train.drop_conv) holds no parameters: no figures, rather than zeros
    return [(name, module) for name, module in out if any(True for _ in module.parameters())]


class HealthMonitor:
    """Per-layer figures of one armed step: activations (through the model's observer) and norms.

    activations=False (a torch.compile'd model, whose graph should not carry
    the observer) keeps only the gradient and update figures.
    """

    def __init__(self, model, activations: bool = True):
        self.model, self.armed = model, False
        self.modules = _layer_modules(model)
        self.sums: dict[str, torch.Tensor] = {}
        if activations:
            model.observer = self.observe

    def observe(self, name: str, y: torch.Tensor) -> None:
        """Sum, sum of squares, zeros and count of a layer's output (after ReLU; fc8: the logits).

        Kept on the activation's device: the figures of a step reach the host
        in one transfer, in `collect` (a GPU is not synchronised per layer).
        """
        if not self.armed:
            return
        with torch.no_grad():
            y = y.detach()
            zeros = (y == 0).sum() if name != "fc8" else torch.zeros((), device=y.device)
            s = torch.stack(
                [
                    y.sum(dtype=torch.float32),
                    y.float().square().sum(),
                    zeros.float(),
                    torch.tensor(float(y.numel()), device=y.device),
                ]
            )
            s = s.to(self.device, non_blocking=True)
            self.sums[name] = self.sums[name] + s if name in self.sums else s  # the two columns add up

    @property
    def device(self) -> torch.device:
        return self.model.fc8.weight.device

    def arm(self) -> None:
        """Record the next forward pass (call before the step's forward)."""
        self.armed, self.sums = True, {}

    def collect(self, optimizer) -> dict[str, dict[str, float]]:
        """Per-layer figures of the armed step; call after optimizer.step(). One device-to-host copy."""
        self.armed = False
        sums, self.sums = self.sums, {}
        lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        zero = torch.zeros((), device=self.device)
        parts = []
        with torch.no_grad():
            for name, module in self.modules:
                for p in module.parameters():
                    buf = optimizer.state.get(p, {}).get("momentum_buffer")
                    g2 = p.grad.float().square().sum() if p.grad is not None else zero
                    u2 = buf.float().square().sum() * lr.get(id(p), 0.0) ** 2 if buf is not None else zero
                    parts.append(
                        torch.stack([g2.to(self.device), u2.to(self.device), p.float().square().sum().to(self.device)])
                    )
            names = list(sums)
            flat = torch.cat([torch.stack(parts).flatten(), *(sums[n] for n in names)]).cpu().double().tolist()
        out: dict[str, dict[str, float]] = {}
        acts = flat[3 * len(parts) :]
        for i, name in enumerate(names):
            s, s2, zeros, n = acts[4 * i : 4 * i + 4]
            mean = s / n
            out[name] = {"act_mean": mean, "act_std": math.sqrt(max(s2 / n - mean * mean, 0.0))}
            if name != "fc8":
                out[name]["dead"] = zeros / n
        norms: dict[str, list[float]] = {}
        k = 0
        for name, module in self.modules:
            acc = norms.setdefault(name, [0.0, 0.0, 0.0])
            for _ in module.parameters():
                for j in range(3):
                    acc[j] += flat[3 * k + j]
                k += 1
        for name, (g2, u2, w2) in norms.items():
            fig = out.setdefault(name, {})
            fig["grad_norm"] = math.sqrt(g2)
            fig["update_ratio"] = math.sqrt(u2) / math.sqrt(w2) if w2 > 0 else 0.0
        return out

    def remove(self) -> None:
        if self.model.observer == self.observe:
            self.model.observer = None


@contextmanager
def health_check(monitor: HealthMonitor | None, optimizer, armed: bool):
    """Around one SGD step: arm the monitor before the forward pass, collect after the update.

    Yields a dict that holds the step's per-layer figures after the block
    (empty when there is no monitor or the step is not armed).
    """
    figures: dict = {}
    if monitor and armed:
        monitor.arm()
    yield figures
    if monitor and armed:
        figures.update(monitor.collect(optimizer))


# A window's mean loss is at chance within this many nats of ln(classes). An absolute margin: a
# share of ln(classes) (5% was used) called a loss of 6.6 at 1000 classes flat, though it had left
# chance by 0.3. Far above chance is the explosion warning's business.
CHANCE_MARGIN = 0.1
# Share of a fully connected layer's ReLUs that are zero, over which the `dead` warning is given.
DEAD_SHARE = 0.8
DEAD_LAYERS = ("fc6", "fc7")


def at_chance(loss: float, num_classes: int) -> bool:
    return abs(loss - math.log(num_classes)) < CHANCE_MARGIN


def dead_layers(health: dict | None) -> dict[str, float]:
    """fc6's and fc7's dead shares where over DEAD_SHARE."""
    shares = {layer: (health or {}).get(layer, {}).get("dead") for layer in DEAD_LAYERS}
    return {layer: v for layer, v in shares.items() if v is not None and v > DEAD_SHARE}


@dataclass
class LossWatch:
    """The loss-based warnings; `check_loss` returns the new ones as (kind, message)."""

    num_classes: int
    flat_after: int = 1000  # steps
    explode_factor: float = 2.0  # times ln(classes)
    given: set = field(default_factory=set)

    @property
    def chance_loss(self) -> float:
        return math.log(self.num_classes)

    def stalled(self, first_step: int, step: int, loss: float, stall_after: int) -> bool:
        """True if the window of steps first_step..step holds step `stall_after` (0: never) and its
        mean loss is still at chance. Judged once: a later relapse is the collapse warning's business."""
        return 0 < stall_after and first_step <= stall_after <= step and at_chance(loss, self.num_classes)

    def check_loss(self, step: int, loss: float) -> list[tuple[str, str]]:
        new = []
        chance = self.chance_loss
        if loss > self.explode_factor * chance and "explosion" not in self.given:
            new.append(
                (
                    "explosion",
                    f"step {step}: mean loss {loss:.3g} is above {self.explode_factor:g} x "
                    f"ln({self.num_classes}) = {self.explode_factor * chance:.3g}: the updates are too large "
                    "for this network (train.warmup_steps or a lower train.lr)",
                )
            )
        if step >= self.flat_after and at_chance(loss, self.num_classes) and "flat" not in self.given:
            new.append(
                (
                    "flat",
                    f"step {step}: mean loss {loss:.3f} is still at chance (within {CHANCE_MARGIN:g} of "
                    f"ln({self.num_classes}) = {chance:.3f}): the network is not learning (check the init, lr "
                    "and inputs; train.stall_after stops such a run)",
                )
            )
        self.given |= {kind for kind, _ in new}
        return new
