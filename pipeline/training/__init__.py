"""The train stage's parts (pipeline/train.py holds the recipe's loop and the CLI).

placement   devices, bf16 autocast, channels_last, the DDP and torch.compile wrappers
recipe      SGD with momentum and weight decay, the plateau schedule, the optional warm-up
state       counters, best epoch, history and warnings, saved in every checkpoint
run_folder  the run's files, and whether a rerun resumes, extends or starts over
log         metrics.jsonl, the progress bar, log lines and health warnings
curve       the training curve (curve.png)
"""
