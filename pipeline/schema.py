"""The config schema's defaults, for the stages' settings classes and CLIs.

workflow/schemas/config.schema.yaml is the one home of every default (and of
its documentation); a stage run without Snakemake takes the same values as
the workflow. Values the schema does not hold (the architecture's fixed facts,
runtime knobs such as torch threads) stay with their code.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
# The augment.* keys that shape the training's images (pipeline/loaders.py AugmentSettings): the train
# stage takes them and keeps them in its checkpoints; the other augment.* keys set up the augment stage's
# own report. Here, not beside AugmentSettings, because the workflow reads it without importing DALI.
AUGMENT_SETTINGS = ("lighting", "lighting_std", "normalize", "crops", "flips")


@cache
def defaults(section: str) -> dict:
    """{key: default} of one top-level config section (train, augment, evaluate, ...)."""
    props = yaml.safe_load(SCHEMA.read_text())["properties"][section]["properties"]
    return {key: spec["default"] for key, spec in props.items() if "default" in spec}
