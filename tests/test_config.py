"""The config is validated before any job runs, with errors that name the key."""
from pathlib import Path

import yaml

from conftest import REPO, snakemake


def dry_run(tmp_path: Path, override: dict):
    cfg = tmp_path / "override.yaml"
    cfg.write_text(yaml.safe_dump(override))
    return snakemake(tmp_path, "-n", "--configfile", str(cfg), check=False)


def test_default_config_is_valid(tmp_path):
    proc = snakemake(tmp_path, "-n")
    assert "rule all" in proc.stdout or "all" in proc.stdout


def test_wrong_key_named_with_allowed_keys(tmp_path):
    proc = dry_run(tmp_path, {"train": {"widht": 0.5}})
    assert proc.returncode != 0
    assert "config key train" in proc.stderr and "'widht' was unexpected" in proc.stderr
    assert "'width'" in proc.stderr


def test_wrong_value_names_key_and_expected(tmp_path):
    proc = dry_run(tmp_path, {"augment": {"lighting": "bogus"}, "resize": {"jpeg_quality": "high"}})
    assert proc.returncode != 0
    assert "config key augment.lighting: 'bogus' is not one of ['paper', 'sqrt', 'none']" in proc.stderr
    assert "config key resize.jpeg_quality: 'high' is not of type 'integer'" in proc.stderr


def test_missing_local_archive_named(tmp_path):
    proc = dry_run(tmp_path, {"dataset": {"name": "imagenet", "archives": {
        "train": {"url": str(tmp_path / "nope.tar"), "md5": "1d675b47d978889d74fa0da5fadfb00e"}}}})
    assert proc.returncode != 0
    assert "dataset.archives.train.url" in proc.stderr and "nope.tar does not exist" in proc.stderr


def test_folders_source_needs_folders(tmp_path):
    proc = dry_run(tmp_path, {"dataset": {"source": "folders", "folders": {"train": str(tmp_path / "x")}}})
    assert proc.returncode != 0
    assert "dataset.folders.train" in proc.stderr and "is not a folder" in proc.stderr


def test_imagenet_preset_is_valid_schema():
    from jsonschema import Draft202012Validator

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    preset = yaml.safe_load((REPO / "workflow/presets/imagenet.yaml").read_text())

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    errors = list(Draft202012Validator(schema).iter_errors(merge(base, preset)))
    assert not errors, errors


def test_nested_command_line_overrides_take_the_schema_types(tmp_path):
    # Snakemake hands nested --config values over as strings ('5'): they are read as the schema's types
    proc = snakemake(tmp_path, "-n", "-p", "--config", 'train={"epochs": 5, "lr": 0.02, "compile": true}',
                     "resize={\"jpeg_quality\": 85}", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "--epochs 5 " in out and "--lr 0.02 " in out and "--compile " in out and "--jpeg-quality 85" in out


def test_nested_override_of_the_wrong_type_still_fails(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", 'train={"epochs": "many"}', check=False)
    assert proc.returncode != 0
    assert "config key train.epochs: 'many' is not of type 'integer'" in proc.stderr


def test_runtime_knobs_are_resources_and_a_moved_key_says_where_it_went(tmp_path):
    proc = dry_run(tmp_path, {"train": {"workers": 3}})
    assert proc.returncode != 0
    assert "config key train.workers is gone" in proc.stderr and "dali_threads" in proc.stderr
    # DALI threads come from the job's cores, or --set-resources, without touching the config
    proc = snakemake(tmp_path, "-n", "-p", "--set-resources", "train:dali_threads=5", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--workers 5" in proc.stdout + proc.stderr
