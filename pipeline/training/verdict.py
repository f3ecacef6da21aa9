"""The trainability verdict: from candidate runs' metrics.jsonl, the step where the loss left
ln(classes), fc7's dead share on the way, the held-out error, and which init the real run should
use; and forecast.md's section on it. Read by the trainability stage (pipeline/trainability.py),
which trains the candidates, and by the forecast (pipeline/forecast.py), which reports them.
"""

from __future__ import annotations

import math

from pipeline.errors import PipelineError
from pipeline.health import CHANCE_MARGIN
from pipeline.training.recipe import SOURCE_BIAS_LR_FACTOR

# A window's mean loss this far (nats) below ln(classes) has clearly left chance (the bar the
# CPU evidence was held to); CHANCE_MARGIN is where "at chance" ends.
CLEARLY_LEFT = 0.5
DEAD_AT_STEPS = (250, 500, 1000, 2000)  # and the first and last windows


class TrainabilityError(PipelineError):
    """A candidate's training failed, or its metrics cannot be read."""


def left_chance_step(windows: list[dict], num_classes: int, below: float) -> int | None:
    """The first window's step whose mean loss is more than `below` nats under ln(classes)."""
    chance = math.log(num_classes)
    return next((w["step"] for w in windows if w["train_loss"] < chance - below), None)


def dead_shares(windows: list[dict], layer: str = "fc7") -> dict[str, float]:
    """The layer's dead share at the first window, near DEAD_AT_STEPS, and at the last window."""
    measured = [w for w in windows if layer in w.get("health", {})]
    if not measured:
        return {}
    picks = [measured[0]] + [min(measured, key=lambda w: abs(w["step"] - s)) for s in DEAD_AT_STEPS]
    picks.append(measured[-1])
    return {str(w["step"]): w["health"][layer]["dead"] for w in sorted(picks, key=lambda w: w["step"])}


def run_verdict(init: str, rows: list[dict], num_classes: int, batch_size: int) -> dict:
    """What one candidate's metrics.jsonl says: when the loss left chance, fc7, the held-out error."""
    windows = [r for r in rows if "train_loss" in r]
    epochs = [r for r in rows if "val_top5_err" in r]
    if not windows:
        raise TrainabilityError(f"init {init}: its metrics.jsonl has no training window")
    left = left_chance_step(windows, num_classes, CHANCE_MARGIN)
    clearly = left_chance_step(windows, num_classes, CLEARLY_LEFT)
    steady = windows[1:] or windows
    return {
        "init": init,
        "steps": windows[-1]["step"],
        "left_chance_step": left,
        "clearly_left_step": clearly,
        "first_loss": windows[0]["train_loss"],
        "final_loss": windows[-1]["train_loss"],
        "chance_loss": math.log(num_classes),
        "fc7_dead": dead_shares(windows),
        "best_val_top5_err": min((e["val_top5_err"] for e in epochs), default=None),
        "chance_top5_err": 100.0 * (1 - min(5, num_classes) / num_classes),
        "steps_per_s": sum(w["images_per_s"] for w in steady) / len(steady) / batch_size,
    }


def recommend(verdicts: list[dict]) -> tuple[str | None, str]:
    """(init, why). The paper's init while it leaves chance; else the one that left chance first."""
    left = [v for v in verdicts if v["left_chance_step"] is not None]
    if not left:
        steps = max(v["steps"] for v in verdicts)
        return None, (
            f"no candidate left chance within {steps} steps: do not start the real run; try another "
            "train.lr or check the data (labels, class signal)"
        )
    paper = next((v for v in left if v["init"] == "paper"), None)
    if paper is not None:
        return "paper", f"the paper's init left chance at step {paper['left_chance_step']}: keep train.init: paper"
    best = min(left, key=lambda v: v["left_chance_step"])
    return best["init"], (
        f"the paper's init did not leave chance; {best['init']} did at step {best['left_chance_step']}: "
        f"set train.init: {best['init']} (with train.bias_lr_factor: {SOURCE_BIAS_LR_FACTOR[best['init']]:g})"
    )


def describe(v: dict) -> str:
    """One line of forecast.md per candidate."""
    left = f"left chance at step {v['left_chance_step']}" if v["left_chance_step"] else "did not leave chance"
    dead = ", ".join(f"{share:.0%} at {step}" for step, share in v["fc7_dead"].items()) or "not measured"
    top5 = f"; held-out top-5 error {v['best_val_top5_err']:.1f}%" if v["best_val_top5_err"] is not None else ""
    return (
        f"{v['init']}: {left} (loss {v['first_loss']:.3f} -> {v['final_loss']:.3f} in {v['steps']} steps, "
        f"ln = {v['chance_loss']:.3f}){top5}; fc7 dead {dead}; {v['steps_per_s']:.1f} steps/s"
    )


def section(result: dict) -> list[str]:
    """forecast.md's lines on whether the run will learn."""
    lines = ["## Will it learn?", ""]
    if not result["ran"]:
        return lines + [f"Not trained here ({result['reason']}). What a CPU measured: {result['cpu_evidence']}.", ""]
    lines += [f"Each init trained {result['steps']} steps on {result['device']}:", ""]
    lines += [f"- {describe(v)}" for v in result["runs"]]
    return lines + ["", f"**Use: {result['recommended_init'] or 'none'}**: {result['why']}.", ""]
