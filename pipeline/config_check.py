"""The workflow's config check: fail before any job runs, naming the key and what it expects.

    check(config)  # coerce command-line strings, validate, fill in defaults, check local sources

The Snakefile calls `check_or_exit(config)` (workflow/rules/common.smk); tests
call `check` on plain dicts, without Snakemake. Light to import (yaml and
jsonschema only): every Snakemake run imports it.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import jsonschema
import yaml

from pipeline import sources
from pipeline.schema import SCHEMA


class ConfigError(ValueError):
    """A config the workflow cannot run; the message names every key at fault."""


def _accepts(schema: dict, value) -> bool:
    try:
        jsonschema.Draft202012Validator(schema).validate(value)
        return True
    except jsonschema.ValidationError:
        return False


def coerce_to_schema(cfg: dict, schema: dict, root: dict | None = None) -> None:
    """Read string leaves as YAML where the schema wants a number, boolean or null.

    `snakemake --config 'train={"epochs": 5}'` hands nested values over as
    strings ('5'); without this, every numeric override fails validation. A
    string is replaced only when the schema rejects it and accepts the kind of
    its YAML reading, so a wrong value ('high' for an integer) still fails,
    naming the key, and an out-of-range number ('-0.01' for a positive lr)
    fails on its bound with the message a config file's value gets.
    """
    root = root or schema
    props = schema.get("properties", {})
    for key, value in list(cfg.items()) if isinstance(cfg, dict) else []:
        sub = props.get(key)
        if sub is None:
            continue
        if "$ref" in sub:  # only local refs: #/$defs/name
            name = os.path.basename(sub["$ref"])
            sub = {**root["$defs"][name], **{k: v for k, v in sub.items() if k != "$ref"}}
        if isinstance(value, dict):
            coerce_to_schema(value, sub, root)
        elif isinstance(value, list) and "items" in sub:  # ablations.seeds: [0, 1] arrives as ['0', '1']
            cfg[key] = [_coerced(item, sub["items"], root) for item in value]
        else:
            cfg[key] = _coerced(value, sub, root)


def _coerced(value, schema: dict, root: dict):
    """A string leaf read as YAML where the schema rejects it and accepts its reading; else as it is."""
    if not isinstance(value, str):
        return value
    schema = {**schema, "$defs": root.get("$defs", {})}
    if _accepts(schema, value):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):  # YAML 1.1 reads 1e-9 (no dot) as a string
        try:
            parsed = float(value)
        except ValueError:
            pass
    # out of range too: then validation names the bound, as for a file
    return parsed if not isinstance(parsed, str) and _accepts(_without_bounds(schema), parsed) else value


BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def _without_bounds(schema: dict) -> dict:
    """The schema minus its numeric bounds: is the value of the right kind, whatever its size."""
    return {k: v for k, v in schema.items() if k not in BOUNDS}


# Keys that left the config, and where their job went.
MOVED_KEYS = {
    ("train", "workers"): "DALI threads are a runtime knob now, the resource dali_threads of rule "
    "train (--set-resources train:dali_threads=N, or a profile); "
    "augment and evaluate use their job's threads"
}


def _with_defaults(validator_class):
    """The validator class of snakemake.utils.validate: each `properties` it checks fills in its defaults.

    Defaults land wherever validation descends, $ref'd definitions included,
    exactly as `validate(config, schema)` in a Snakefile fills them; copied
    rather than called so the check runs without Snakemake."""
    check_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if "default" in subschema:
                instance.setdefault(name, subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def load_schema(path: str | Path = SCHEMA) -> dict:
    return yaml.safe_load(Path(path).read_text())


def check_config(cfg: dict, schema: dict | None = None) -> None:
    """Validate `cfg` against the schema, every problem in one error; then fill in the schema's defaults."""
    for (section, key), where in MOVED_KEYS.items():
        if key in (cfg.get(section) or {}):
            raise ConfigError(f"config key {section}.{key} is gone: {where}; delete it from your config")
    schema = schema if schema is not None else load_schema()
    coerce_to_schema(cfg, schema)
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path)):
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            problems.append(f"config key {key}: {err.message}; expected one of {allowed}")
        else:
            problems.append(f"config key {key}: {err.message}")
    if problems:
        listing = "\n  ".join(problems)
        raise ConfigError(f"invalid configuration (see workflow/schemas/config.schema.yaml):\n  {listing}")
    _with_defaults(jsonschema.Draft202012Validator)(schema).validate(cfg)


ARCHIVE_SPEC = {
    "url": "a local path, file:// or https:// URL of the archive",
    "md5": "32 hex digits or an md5sum-format file",
}


def _archive_problem(part: str, key: str, value: str, demo_dir: str) -> str | None:
    """What is wrong with one dataset.archives entry, or None; the demo's archives are made by the workflow."""
    if key == "md5" and sources.is_md5_digest(value):
        return None
    if key == "url" and sources.is_remote(value):
        return None
    try:
        path = os.path.normpath(sources.local_path(value))
    except sources.SourceError as exc:
        return f"dataset.archives.{part}.{key}: {exc}; expected {ARCHIVE_SPEC[key]}"
    if path.startswith(os.path.join(demo_dir, "")) or os.path.exists(path):
        return None
    return f"dataset.archives.{part}.{key}: {value} does not exist; expected {ARCHIVE_SPEC[key]}"


def check_paths(cfg: dict) -> None:
    """Local sources must exist, except the demo archives the workflow makes."""
    ds = cfg["dataset"]
    demo_dir = os.path.normpath(cfg["demo"]["out_dir"])
    missing = []
    if ds["source"] == "archives":
        if "archives" not in ds:
            missing.append("dataset.archives: required when dataset.source is 'archives'")
        for part, src in ds.get("archives", {}).items():
            missing += [p for key in ("url", "md5") if (p := _archive_problem(part, key, src[key], demo_dir))]
    else:
        for part in ("train", "val"):
            folder = ds.get("folders", {}).get(part)
            if not folder or not os.path.isdir(folder):
                missing.append(
                    f"dataset.folders.{part}: {folder!r} is not a folder; expected "
                    f"a tree {part}/<wnid>/*.JPEG when dataset.source is 'folders'"
                )
        if (ds.get("folders") or {}).get("devkit"):  # class names from the devkit archive
            devkit = ds.get("archives", {}).get("devkit")
            if devkit is None:
                missing.append("dataset.archives.devkit: required when dataset.folders.devkit is true")
            else:
                missing += [
                    p for key in ("url", "md5") if (p := _archive_problem("devkit", key, devkit[key], demo_dir))
                ]
    if missing:
        listing = "\n  ".join(missing)
        raise ConfigError(f"invalid configuration:\n  {listing}")


def check_settings(cfg: dict) -> None:
    """Settings each valid alone that cannot go together (after `check_config` filled in the defaults)."""
    train = cfg.get("train") or {}
    if train.get("columns") == 1 and isinstance(train.get("devices"), list):
        raise ConfigError(
            "invalid configuration:\n  config key train.columns: 1 is the one-GPU net of the paper's section 3.2, "
            f"which runs on one device; train.devices lists two ({', '.join(train['devices'])}): give one, "
            "or set train.columns to 2 for the paper's two-column split"
        )


def variant_config(cfg: dict, variant: dict, seed: int | None = None) -> dict:
    """The checked config with one ablation variant's train.* and augment.* keys (and a seed) put in."""
    out = copy.deepcopy(cfg)
    for section, keys in variant.items():
        out[section].update(keys)
    if seed is not None:
        out["train"]["seed"] = seed
    return out


def check_variants(cfg: dict, schema: dict | None = None) -> None:
    """Each ablation variant's keys are checked as the base config's are: a typo or a bad value in
    ablations.variants.<name> is named there, before any job runs."""
    for name, variant in (cfg.get("ablations") or {}).get("variants", {}).items():
        try:
            merged = variant_config(cfg, variant)
            check_config(merged, schema)
            check_settings(merged)
        except ConfigError as exc:
            raise ConfigError(f"ablations.variants.{name}: {exc}") from None
        for section, keys in variant.items():  # --config hands values over as strings: keep them as read
            keys.update({key: merged[section][key] for key in keys})


def check(cfg: dict, schema: dict | None = None) -> None:
    """The whole check, in place: `cfg` leaves with its strings coerced and its defaults filled in."""
    check_config(cfg, schema)
    check_settings(cfg)
    check_variants(cfg, schema)
    check_paths(cfg)


def check_or_exit(cfg: dict) -> None:
    """`check` for the Snakefile: a bad config ends the run with one `error:` line, not a traceback."""
    try:
        check(cfg)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
