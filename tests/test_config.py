"""The config is validated before any job runs, with errors that name the key.

pipeline.config_check on plain dicts first, then the same checks through a
Snakemake dry run, which is how users meet them.
"""

import copy
import hashlib
from pathlib import Path

import pytest
import yaml

from pipeline.config_check import ConfigError, check, check_config, check_paths, coerce_to_schema, load_schema

from helpers import REPO, job_stats, snakemake

DIGEST = "1d675b47d978889d74fa0da5fadfb00e"
# The jobs the default config (the demo) plans in an empty folder.
DEMO_JOBS = {
    "demo": 1,
    "fetch": 1,
    "index": 2,
    "resize_train_shard": 4,
    "resize_shard": 2,
    "resize": 1,
    "pca": 1,
    "augment": 1,
    "train": 1,
    "evaluate": 1,
    "resources": 1,
}


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def with_archives(urls: dict[str, str], md5s: dict[str, str] | None = None) -> dict:
    cfg = default_config()
    cfg["dataset"].update(
        name="imagenet", archives={key: {"url": url, "md5": (md5s or {}).get(key, DIGEST)} for key, url in urls.items()}
    )
    return cfg


def localhost_url(path: Path) -> str:
    return "file://localhost" + path.absolute().as_uri()[len("file://") :]


@pytest.fixture
def archives(tmp_path) -> dict[str, Path]:
    """Stand-ins for the three archives: the config check looks only at whether they exist."""
    files = {key: tmp_path / "in" / f"{key}.tar" for key in ("train", "val", "devkit")}
    for path in files.values():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(path.name.encode())
    return files


def problems(cfg: dict) -> str:
    with pytest.raises(ConfigError) as e:
        check(cfg)
    return str(e.value)


# ---------------------------------------------------------------- the module, without Snakemake


@pytest.mark.unit
def test_default_config_passes_and_gets_the_schema_defaults():
    cfg = default_config()
    check(cfg)
    schema = load_schema()
    for section, spec in schema["properties"].items():
        for key, sub in spec.get("properties", {}).items():
            if "default" in sub:
                assert key in cfg[section], f"{section}.{key} default not filled in"


@pytest.mark.unit
def test_defaults_are_filled_as_snakemake_validate_fills_them():
    validate = pytest.importorskip("snakemake.utils").validate
    sparse = {
        "dataset": {
            "name": "demo",
            "source": "archives",
            "folders": {},
            "archives": copy.deepcopy(default_config()["dataset"]["archives"]),
        },
        "demo": {},
        "paths": {},
        "tracking": {"enabled": False},
        "resize": {},
        "augment": {"lighting": "sqrt"},
        "train": {"epochs": 3},
        "evaluate": {},
    }
    ours, theirs = copy.deepcopy(sparse), copy.deepcopy(sparse)
    check_config(ours)
    validate(theirs, str(REPO / "workflow/schemas/config.schema.yaml"))
    assert ours == theirs and ours["dataset"]["folders"] == {"devkit": False}
    assert ours["train"]["epochs"] == 3 and ours["tracking"]["enabled"] is False


@pytest.mark.unit
def test_unknown_key_is_named_with_the_allowed_keys():
    cfg = default_config()
    cfg["train"]["widht"] = 0.5
    msg = problems(cfg)
    assert msg.startswith("invalid configuration (see workflow/schemas/config.schema.yaml):\n  config key train: ")
    assert "'widht' was unexpected" in msg and "expected one of [" in msg and "'width'" in msg


@pytest.mark.unit
def test_every_wrong_value_is_listed_in_one_error():
    cfg = default_config()
    cfg["augment"]["lighting"] = "bogus"
    cfg["resize"]["jpeg_quality"] = "high"
    msg = problems(cfg)
    assert "config key augment.lighting: 'bogus' is not one of ['paper', 'sqrt', 'none']" in msg
    assert "config key resize.jpeg_quality: 'high' is not of type 'integer'" in msg


@pytest.mark.unit
def test_command_line_strings_take_the_schema_types():
    schema = load_schema()
    cfg = {
        "train": {"epochs": "5", "lr": "0.02", "compile": "true"},
        "resize": {"jpeg_quality": "85"},
        "dataset": {"name": "007"},
    }
    coerce_to_schema(cfg, schema)
    assert cfg["train"] == {"epochs": 5, "lr": 0.02, "compile": True} and cfg["resize"] == {"jpeg_quality": 85}
    assert cfg["dataset"]["name"] == "007"  # the schema wants a string: left as given
    wrong = {"train": {"epochs": "many"}}
    coerce_to_schema(wrong, schema)
    assert wrong == {"train": {"epochs": "many"}}
    exponent = {"train": {"lr": "1e-9"}}  # YAML 1.1 reads it as a string
    coerce_to_schema(exponent, schema)
    assert exponent == {"train": {"lr": 1e-9}}


@pytest.mark.unit
def test_an_out_of_range_command_line_number_gets_the_config_files_message():
    from_command_line, from_file = default_config(), default_config()
    from_command_line["train"]["lr"], from_file["train"]["lr"] = "-0.01", -0.01  # check() coerces strings
    assert problems(from_command_line) == problems(from_file)
    assert "config key train.lr: -0.01 is less than or equal to the minimum of 0" in problems(from_file)


@pytest.mark.unit
def test_every_published_init_passes_the_config_check_and_a_wrong_one_lists_them():
    for init in ("paper", "caffe", "cuda_convnet2", "width_scaled"):
        cfg = default_config()
        cfg["train"].update(init=init, bias_lr_factor=2, init_gain="width", stall_after=500)
        check(cfg)  # raises ConfigError naming the key where a value is wrong
        assert cfg["train"]["init"] == init and cfg["train"]["bias_lr_factor"] == 2
    cfg = default_config()
    cfg["train"]["init"] = "kaiming"
    assert "config key train.init: 'kaiming' is not one of ['paper', 'caffe', 'cuda_convnet2', 'width_scaled']" in (
        problems(cfg)
    )


@pytest.mark.unit
def test_moved_key_says_where_its_job_went():
    cfg = default_config()
    cfg["train"]["workers"] = 3
    msg = problems(cfg)
    assert msg.startswith("config key train.workers is gone: ") and "dali_threads" in msg
    assert msg.endswith("; delete it from your config")


@pytest.mark.unit
def test_local_archives_as_paths_file_urls_and_localhost_urls(archives):
    for form in (str, lambda p: p.absolute().as_uri(), localhost_url):
        cfg = with_archives({k: form(p) for k, p in archives.items()})
        check(cfg)


@pytest.mark.unit
def test_md5sum_file_may_be_a_path_or_a_file_url(archives, tmp_path):
    md5sums = tmp_path / "MD5SUMS"
    md5sums.write_text("".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n" for p in archives.values()))
    for spec in (str(md5sums), localhost_url(md5sums)):
        check(with_archives({k: str(p) for k, p in archives.items()}, {k: spec for k in archives}))
    msg = problems(with_archives({k: str(p) for k, p in archives.items()}, {"val": str(tmp_path / "NOPE")}))
    assert (
        f"dataset.archives.val.md5: {tmp_path / 'NOPE'} does not exist; "
        "expected 32 hex digits or an md5sum-format file" in msg
    )


@pytest.mark.unit
def test_missing_local_archives_are_named_however_they_are_written(tmp_path):
    gone = tmp_path / "gone.tar"
    urls = {"train": str(gone), "val": gone.as_uri(), "devkit": localhost_url(gone)}
    msg = problems(with_archives(urls))
    for key, url in urls.items():
        assert (
            f"dataset.archives.{key}.url: {url} does not exist; "
            "expected a local path, file:// or https:// URL of the archive" in msg
        )


@pytest.mark.unit
def test_sources_fetch_cannot_read_fail_the_check():
    urls = {
        "train": "ftp://example.org/train.tar",
        "val": "file://fileserver/val.tar",
        "devkit": "https://example.org/devkit.tar.gz",
    }  # remote: fetch downloads it, nothing to check
    msg = problems(with_archives(urls))
    assert "dataset.archives.train.url: ftp://example.org/train.tar: unsupported URL scheme 'ftp'" in msg
    assert "dataset.archives.val.url: file://fileserver/val.tar: file:// URLs must name a local file" in msg
    assert "devkit" not in msg


@pytest.mark.unit
def test_demo_archives_need_not_exist_yet(tmp_path):
    cfg = default_config()
    cfg["demo"]["out_dir"] = str(tmp_path / "demo")
    cfg["dataset"]["archives"] = {
        k: {"url": localhost_url(tmp_path / "demo" / f"{k}.tar"), "md5": DIGEST} for k in ("train", "val", "devkit")
    }
    check(cfg)


@pytest.mark.unit
def test_folders_source_needs_both_folders_and_a_readable_devkit(tmp_path):
    for part in ("train", "val"):
        (tmp_path / part).mkdir()
    cfg = default_config()
    cfg["dataset"].update(source="folders", folders={"train": str(tmp_path / "train"), "val": None})
    msg = problems(cfg)
    assert "dataset.folders.val: None is not a folder; expected a tree val/<wnid>/*.JPEG" in msg
    assert "dataset.folders.train" not in msg
    cfg["dataset"]["folders"].update(val=str(tmp_path / "val"), devkit=True)
    cfg["dataset"]["archives"]["devkit"] = {"url": str(tmp_path / "no-devkit.tar.gz"), "md5": DIGEST}
    assert "dataset.archives.devkit.url: " in problems(cfg)
    cfg["dataset"]["folders"]["devkit"] = False
    check_paths(cfg)


# ---------------------------------------------------------------- through Snakemake


def dry_run(tmp_path: Path, override: dict, *args: str):
    cfg = tmp_path / "override.yaml"
    cfg.write_text(yaml.safe_dump(override))
    return snakemake(tmp_path, "-n", "--configfile", str(cfg), *args, check=False)


@pytest.mark.integration
def test_default_config_is_valid(tmp_path):
    proc = snakemake(tmp_path, "-n")
    assert job_stats(proc.stdout + proc.stderr) == DEMO_JOBS


@pytest.mark.integration
def test_localhost_file_urls_are_accepted_and_fetched_from(tmp_path, archives):
    urls = {key: localhost_url(path) for key, path in archives.items()}
    proc = dry_run(
        tmp_path,
        {"dataset": {"name": "imagenet", "archives": {key: {"url": url, "md5": DIGEST} for key, url in urls.items()}}},
        "-p",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    jobs = job_stats(out)
    assert jobs["fetch"] == 1 and "demo" not in jobs  # the sources exist: nothing to draw
    for key, url in urls.items():
        assert f"--{key} {url} --{key}-md5 {DIGEST}" in out


@pytest.mark.integration
def test_wrong_key_named_with_allowed_keys(tmp_path):
    proc = dry_run(tmp_path, {"train": {"widht": 0.5}})
    assert proc.returncode != 0
    assert "config key train" in proc.stderr and "'widht' was unexpected" in proc.stderr
    assert "'width'" in proc.stderr


@pytest.mark.integration
def test_wrong_value_names_key_and_expected(tmp_path):
    proc = dry_run(tmp_path, {"augment": {"lighting": "bogus"}, "resize": {"jpeg_quality": "high"}})
    assert proc.returncode != 0
    assert "config key augment.lighting: 'bogus' is not one of ['paper', 'sqrt', 'none']" in proc.stderr
    assert "config key resize.jpeg_quality: 'high' is not of type 'integer'" in proc.stderr


@pytest.mark.integration
def test_missing_local_archive_named(tmp_path):
    proc = dry_run(
        tmp_path,
        {
            "dataset": {
                "name": "imagenet",
                "archives": {"train": {"url": str(tmp_path / "nope.tar"), "md5": "1d675b47d978889d74fa0da5fadfb00e"}},
            }
        },
    )
    assert proc.returncode != 0
    assert "dataset.archives.train.url" in proc.stderr and "nope.tar does not exist" in proc.stderr


@pytest.mark.integration
def test_folders_source_needs_folders(tmp_path):
    proc = dry_run(tmp_path, {"dataset": {"source": "folders", "folders": {"train": str(tmp_path / "x")}}})
    assert proc.returncode != 0
    assert "dataset.folders.train" in proc.stderr and "is not a folder" in proc.stderr


@pytest.mark.unit
def test_imagenet_preset_is_valid_schema():
    from jsonschema import Draft202012Validator

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    preset = yaml.safe_load((REPO / "workflow/presets/imagenet.yaml").read_text())

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    merged = merge(base, preset)
    errors = list(Draft202012Validator(schema).iter_errors(merged))
    assert not errors, errors
    check_config(merged)  # the schema's defaults filled in, as the workflow fills them
    # the demo's own recipe (config.yaml) does not leak into the paper's: section 5's numbers, full width
    recipe = {k: merged["train"][k] for k in ("width", "lr", "momentum", "weight_decay", "batch_size", "epochs")}
    assert recipe == {
        "width": 1.0,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "batch_size": 128,
        "epochs": 90,
    }
    assert merged["train"]["dropout_style"] == "paper"
    # the init is cuda-convnet2's, with its bias lr (bench/RESULTS-trainability.md); the paper's is one key away
    assert merged["train"]["init"] == "cuda_convnet2" and merged["train"]["bias_lr_factor"] == 2
    merged["train"].update(init="paper", bias_lr_factor=1)
    assert not list(Draft202012Validator(schema).iter_errors(merged))


@pytest.mark.integration
def test_nested_command_line_overrides_take_the_schema_types(tmp_path):
    # Snakemake hands nested --config values over as strings ('5'): they are read as the schema's types
    proc = snakemake(
        tmp_path,
        "-n",
        "-p",
        "--config",
        'train={"epochs": 5, "lr": 0.02, "compile": true}',
        'resize={"jpeg_quality": 85}',
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "--epochs 5 " in out and "--lr 0.02 " in out and "--compile " in out and "--jpeg-quality 85" in out


@pytest.mark.integration
def test_nested_override_of_the_wrong_type_still_fails(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", 'train={"epochs": "many"}', check=False)
    assert proc.returncode != 0
    assert "config key train.epochs: 'many' is not of type 'integer'" in proc.stderr


@pytest.mark.integration
def test_runtime_knobs_are_resources_and_a_moved_key_says_where_it_went(tmp_path):
    proc = dry_run(tmp_path, {"train": {"workers": 3}})
    assert proc.returncode != 0
    assert "config key train.workers is gone" in proc.stderr and "dali_threads" in proc.stderr
    # DALI threads come from the job's cores, or --set-resources, without touching the config
    proc = snakemake(tmp_path, "-n", "-p", "--set-resources", "train:dali_threads=5", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--dali-threads 5" in proc.stdout + proc.stderr
