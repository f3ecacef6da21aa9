"""One home for every setting.

The schema (workflow/schemas/config.schema.yaml) holds every default and its
documentation; config.yaml holds only the demo's deviations from it; each
preset holds only its own deviations from what the files below it already
give (config.yaml and the schema, and for the preflight the ImageNet preset
too). A value that repeats what is below it is a second home that can drift.

The schema's defaults are also what a stage run by hand gets: its command
line's defaults and its settings class's fields are read from the schema.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from pipeline.config_check import check_config, load_schema
from pipeline.schema import defaults
from pipeline.sources import ILSVRC_TRAIN_IMAGES, ILSVRC_VAL_IMAGES

REPO = Path(__file__).resolve().parents[1]
CONFIG = "config.yaml"
# Each preset and the presets it is layered on (README: the preflight goes on top of the ImageNet preset).
PRESETS = {"workflow/presets/imagenet.yaml": [], "workflow/presets/preflight.yaml": ["workflow/presets/imagenet.yaml"]}
NO_DEFAULT = object()


def load(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text()) or {}


def merge(base: dict, over: dict) -> dict:
    """`over` deep-merged into `base`, as Snakemake merges --configfile files over the Snakefile's configfile."""
    for key, value in over.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def resolved(*presets: str) -> dict:
    """config.yaml, the presets in order, then the schema's defaults filled in: what a workflow run gets."""
    cfg = load(CONFIG)
    for preset in presets:
        merge(cfg, load(preset))
    check_config(cfg)
    return cfg


def leaves(tree: dict, prefix: tuple = ()):
    """(path, value) of every value a file sets; a mapping is a branch, an empty one sets nothing."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def schema_default(schema: dict, path: tuple):
    node = schema
    for key in path:
        node = node.get("properties", {}).get(key)
        if node is None:
            return NO_DEFAULT
        if "$ref" in node:  # only local refs: #/$defs/name
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node.get("default", NO_DEFAULT)


def lookup(cfg: dict, path: tuple):
    for key in path:
        if not isinstance(cfg, dict) or key not in cfg:
            return NO_DEFAULT
        cfg = cfg[key]
    return cfg


def same(a, b) -> bool:
    """Equal as the config's values are compared: True is not 1, 1.0 is 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


# ---------------------------------------------------------------- one home: config.yaml and the presets


@pytest.mark.unit
def test_config_yaml_holds_only_the_demos_deviations_from_the_schema():
    schema = load_schema()
    repeats = [
        f"{'.'.join(path)}: {value!r}"
        for path, value in leaves(load(CONFIG))
        if (default := schema_default(schema, path)) is not NO_DEFAULT and same(value, default)
    ]
    assert not repeats, (
        f"{CONFIG} repeats the schema's default (workflow/schemas/config.schema.yaml) of "
        f"{', '.join(repeats)}: delete it there, the schema gives it"
    )


@pytest.mark.unit
@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_holds_only_its_deviations_from_what_is_below_it(preset):
    below = resolved(*PRESETS[preset])
    under = " + ".join([CONFIG, *PRESETS[preset], "the schema's defaults"])
    repeats = [
        f"{'.'.join(path)}: {value!r}" for path, value in leaves(load(preset)) if same(value, lookup(below, path))
    ]
    assert not repeats, f"{preset} repeats what {under} already give(s): {', '.join(repeats)}; delete it there"


@pytest.mark.unit
@pytest.mark.parametrize("presets", [[], *([*below, preset] for preset, below in PRESETS.items())])
def test_every_layering_resolves_to_a_valid_config(presets):
    cfg = resolved(*presets)  # raises ConfigError naming the key at fault
    assert cfg["train"]["epochs"] >= 1


@pytest.mark.unit
def test_the_schemas_real_run_counts_are_ilsvrc_2012s():
    preflight = defaults("preflight")
    assert (preflight["train_images"], preflight["val_images"]) == (ILSVRC_TRAIN_IMAGES, ILSVRC_VAL_IMAGES)
    assert preflight["epochs"] == defaults("train")["epochs"]  # the forecast's run is the schema's recipe


# ---------------------------------------------------------------- a hand-run stage gets the schema's defaults


class Parsed(Exception):
    """Raised in place of running a stage: its command line has been read."""


def cli_defaults(main, argv: list[str], monkeypatch) -> dict:
    """The values a stage's command line gives to what `argv` (only its required arguments) leaves unsaid."""
    parse = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise Parsed(vars(parse(self, args, namespace)))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    with pytest.raises(Parsed) as got:
        main(argv)
    given = {arg[2:].replace("-", "_") for arg in argv if arg.startswith("--")}
    return {key: value for key, value in got.value.args[0].items() if key not in given}


def signature_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def compared(given: dict, *sections: str) -> dict:
    """{key: (section, schema default)} for `given`'s keys the schema has a default of (the first section wins)."""
    schema = {}
    for section in reversed(sections):
        schema |= {key: (section, value) for key, value in defaults(section).items()}
    return {key: schema[key] for key in given if key in schema}


def mismatches(what: str, given: dict, *sections: str) -> dict:
    """{key: message} of `given`'s values that differ from the schema's default of the same key."""
    return {
        key: f"{what} {key}={given[key]!r}, the schema's {section}.{key}: {value!r}"
        for key, (section, value) in compared(given, *sections).items()
        if not same(given[key], value)
    }


INPUTS = ["--manifest", "m.json", "--pca", "p.json", "--mean-image", "m.npy"]
# TrainConfig fields another change moves onto the schema (TRAIN[...] in place of their literals): where
# only these differ, the failure says that this change is unfinished rather than that a default drifted.
MOVING_TO_THE_SCHEMA = {"lrn", "overlapping_pool", "dropout", "channels_last", "dali_threads"}


@pytest.mark.unit
def test_a_hand_run_training_gets_the_schemas_defaults(monkeypatch):
    from pipeline import train

    fields = {f.name: f.default for f in dataclasses.fields(train.TrainConfig)}
    cli = cli_defaults(train.main, [*INPUTS, "--classes", "c.tsv", "--out-dir", "out"], monkeypatch)
    assert set(compared(fields, "train", "augment")) >= {"width", "lr", "epochs", "init", "patience", "flat_after"}
    wrong = {}
    for what, given in (("TrainConfig", fields), ("the train CLI", cli)):
        for key, message in mismatches(what, given, "train", "augment").items():
            wrong.setdefault(key, []).append(message)
    drifted = [m for key, messages in wrong.items() if key not in MOVING_TO_THE_SCHEMA for m in messages]
    assert not drifted, f"python -m pipeline.train does not take the schema's defaults: {drifted}"
    moving = [m for messages in wrong.values() for m in messages]
    assert not moving, (
        f"TrainConfig's literals for {sorted(MOVING_TO_THE_SCHEMA & set(wrong))} are not the schema's defaults yet "
        f"(unfinished: these fields are to read TRAIN[...]): {moving}"
    )


# A stage option that shares a schema key's name but not its meaning, and why.
NOT_A_DEFAULT = {
    ("the resize manifest CLI", "holdout_shards"): "0: no held-out slice, which is what the schema's "
    "holdout_per_class: 0 gives (the workflow passes resize.holdout_shards only with holdout_per_class > 0)"
}


@pytest.mark.unit
def test_the_other_hand_run_stages_get_the_schemas_defaults(monkeypatch):
    from pipeline import augment, demo, evaluate, forecast, loaders, resize

    def cli(main, *argv):
        return cli_defaults(main, list(argv), monkeypatch)

    evaluate_inputs = ["--checkpoint", "c.pt", "--shards-manifest", "m.json", "--pca", "p.json"]
    evaluate_inputs += ["--mean-image", "m.npy", "--classes", "c.tsv", "--out-dir", "o"]
    shard = ["shard", "--split", "train", "--index", "i", "--source", "s", "--shard", "0", "--shards", "1"]
    manifest = ["manifest", "--shards-dir", "d", "--train-shards", "1", "--val-shards", "1", "--classes", "c"]
    given = {
        "the augment CLI": (cli(augment.main, *INPUTS, "--out-dir", "o"), ("augment", "train")),
        "augment()": (signature_defaults(augment.augment), ("augment", "train")),
        "AugmentSettings": (signature_defaults(loaders.AugmentSettings), ("augment",)),
        "the evaluate CLI": (cli(evaluate.main, *evaluate_inputs), ("evaluate",)),
        "evaluate()": (signature_defaults(evaluate.evaluate), ("evaluate",)),
        "the resize shard CLI": (cli(resize.main, *shard, "--out", "o.tar"), ("resize",)),
        "the resize manifest CLI": (cli(resize.main, *manifest, "--out", "o"), ("resize",)),
        "resize_shard()": (signature_defaults(resize.resize_shard), ("resize",)),
        "the demo CLI": (cli(demo.main, "--out-dir", "d"), ("demo",)),
        "make_demo()": (signature_defaults(demo.make_demo), ("demo",)),
        "the forecast CLI": (cli(forecast.main, "--results", "r", "--out-dir", "o", "--cores", "2"), ("preflight",)),
        "forecast()": (signature_defaults(forecast.forecast), ("preflight",)),
    }
    wrong = [
        message
        for what, (values, sections) in given.items()
        for key, message in mismatches(what, values, *sections).items()
        if (what, key) not in NOT_A_DEFAULT
    ]
    assert not wrong, f"a stage run by hand does not take the schema's defaults: {wrong}"
    unchecked = [what for what, (values, sections) in given.items() if not compared(values, *sections)]
    assert not unchecked, f"no setting of {unchecked} has a schema default: the check above checked nothing there"


@pytest.mark.unit
def test_the_helpers_see_a_repeat_and_a_deviation():
    schema = load_schema()
    assert schema_default(schema, ("train", "lr")) == defaults("train")["lr"]
    assert schema_default(schema, ("dataset", "name")) is NO_DEFAULT  # required: no default to repeat
    assert schema_default(schema, ("dataset", "archives", "train", "url")) is NO_DEFAULT  # through a $ref
    assert not same(True, 1) and same(1.0, 1)
    base = copy.deepcopy({"train": {"lr": 0.005, "width": 0.25}})
    assert merge(base, {"train": {"lr": 0.01}}) == {"train": {"lr": 0.01, "width": 0.25}}
    assert list(leaves({"a": {}, "b": {"c": [1]}})) == [(("b", "c"), [1])]
