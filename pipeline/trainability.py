"""Will the real run learn? Each candidate init trained for a few thousand steps on the preflight's
data, and the verdict: the step where the loss left ln(classes), fc7's dead share on the way, and
which init the real run should use.

    python -m pipeline.trainability --manifest results/preflight/shards/manifest.json \
        --pca results/preflight/pca/pca.json --mean-image results/preflight/pca/mean_image.npy \
        --classes results/preflight/fetch/classes.tsv --out-dir results/preflight/trainability \
        --inits paper cuda_convnet2 --steps 2500 -- <the train stage's flags>

Each init trains through the train stage's own command (python -m pipeline.train, the preset's
recipe and the flags after `--`), with the biases' lr its source uses (SOURCE_BIAS_LR_FACTOR),
into out_dir/<init>/; trainability.json gathers the verdict. Without a GPU the candidates are not
trained unless --on-cpu is given: 2,500 full-width steps take about 3 hours per init on 2 CPU
cores (30 images/s), and what a CPU measured is in bench/RESULTS-trainability.md.

Evidence (bench/RESULTS-trainability.md, 1000 generated classes, 40 images per class, CPU): the
paper's init sat at ln(1000) for 400 steps while fc7 died (93% dead at width 1.0, 88% at 0.25);
cuda-convnet2's (N(0, 0.03) in conv3-5, biases at twice the lr) left chance at step 140 at width 1.0.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

from pipeline.errors import run_cli
from pipeline.io import read_json, read_jsonl, write_json
from pipeline.layout import TrainFolder
from pipeline.training.recipe import SOURCE_BIAS_LR_FACTOR
from pipeline.training.verdict import TrainabilityError, describe, recommend, run_verdict

STEPS_PER_EPOCH = 250  # a validation pass every 250 steps: the held-out error beside the loss
LOG_EVERY = 20  # steps per metrics window (and health figures): the preflight's own 4 would slow 2,500 steps
CPU_EVIDENCE = (
    "bench/RESULTS-trainability.md: on 2 CPU cores at 1000 classes the paper's init sat at ln(1000) for 400 "
    "steps with fc7 dying (width 1.0 and 0.25), cuda_convnet2's left chance at step 140 at width 1.0"
)


def check_trainability(
    manifest,
    pca,
    mean_image,
    classes,
    out_dir,
    inits: list[str],
    steps: int,
    train_flags: list[str],
    on_cpu: bool = False,
) -> dict:
    """The stage: train each init for `steps` steps where a GPU is (or `on_cpu`), write trainability.json."""
    import torch

    out = Path(out_dir)
    unknown = [i for i in inits if i not in SOURCE_BIAS_LR_FACTOR]
    if unknown:
        raise TrainabilityError(f"preflight.trainability_inits: unknown init {unknown[0]!r}")
    gpu = torch.cuda.is_available()
    if not gpu and not on_cpu:
        result = {
            "ran": False,
            "device": "cpu",
            "inits": inits,
            "reason": f"no GPU: {steps} full-width steps per init take hours on a CPU; the GPU host's preflight decides",
            "cpu_evidence": CPU_EVIDENCE,
        }
        write_json(out / "trainability.json", result)
        return result
    images = read_json(manifest)["train"]["images"]
    batch = int(_flag(train_flags, "--batch-size", 128))
    per_epoch = min(max(1, images // batch), STEPS_PER_EPOCH, steps)
    epochs = math.ceil(steps / per_epoch)
    verdicts = []
    for init in inits:
        run_dir = out / init
        done = Path(TrainFolder(str(run_dir)).summary)
        if done.exists() and read_json(done).get("steps") == epochs * per_epoch:
            print(f"trainability: {init} already trained ({done})", file=sys.stderr)
        else:  # the train stage resumes an interrupted candidate from its last checkpoint
            train_candidate(init, run_dir, [manifest, pca, mean_image, classes], train_flags, epochs, per_epoch)
        num_classes = read_json(done)["num_classes"]
        verdicts.append(run_verdict(init, read_jsonl(TrainFolder(str(run_dir)).metrics), num_classes, batch))
    choice, why = recommend(verdicts)

    result = {"ran": True, "device": "cuda" if gpu else "cpu", "inits": inits, "steps": epochs * per_epoch}
    result |= {"runs": verdicts, "recommended_init": choice, "why": why}
    write_json(out / "trainability.json", result)
    for v in verdicts:
        print(describe(v), file=sys.stderr)
    print(why, file=sys.stderr)
    return result


def train_candidate(init: str, run_dir: Path, inputs: list, train_flags: list[str], epochs: int, per_epoch: int):
    """One candidate through the train stage's command: the preset's flags, then the init's own."""
    manifest, pca, mean_image, classes = map(str, inputs)
    cmd = [sys.executable, "-m", "pipeline.train", "--manifest", manifest, "--pca", pca, "--mean-image", mean_image]
    cmd += ["--classes", classes, "--out-dir", str(run_dir), *train_flags, "--init", init]
    cmd += ["--bias-lr-factor", f"{SOURCE_BIAS_LR_FACTOR[init]:g}", "--epochs", str(epochs)]
    cmd += ["--steps-per-epoch", str(per_epoch), "--stall-after", "0", "--log-every", str(LOG_EVERY)]
    print(f"trainability: {init}, {epochs} x {per_epoch} steps", file=sys.stderr, flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise TrainabilityError(f"init {init}: the training failed (its log is above; {run_dir})")


def _flag(flags: list[str], name: str, default):
    return flags[flags.index(name) + 1] if name in flags[:-1] else default


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.trainability", description=__doc__.split("\n\n")[0])
    for name in ("manifest", "pca", "mean-image", "classes", "out-dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--inits", nargs="+", required=True, help=f"candidates: {', '.join(SOURCE_BIAS_LR_FACTOR)}")
    p.add_argument("--steps", type=int, required=True, help="SGD steps per candidate")
    p.add_argument("--on-cpu", action="store_true", help="train the candidates without a GPU too (hours)")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="after --: the train stage's flags")
    a = p.parse_args(argv)
    flags = a.train_flags[1:] if a.train_flags[:1] == ["--"] else a.train_flags
    return run_cli(
        check_trainability, a.manifest, a.pca, a.mean_image, a.classes, a.out_dir, a.inits, a.steps, flags, a.on_cpu
    )


if __name__ == "__main__":
    sys.exit(main())
