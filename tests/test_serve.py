"""The registered model serves: the train stage's wrapper logs and registers a tiny checkpoint, then
`mlflow models serve -m models:/<name>/latest` answers over HTTP with pipeline.predict's numbers.

The wrapper runs as the train rule runs it (pipeline.track run --register ...)
under a parent run that start_parent created with a git checkout and a config,
so the registered version carries the provenance of a real invocation.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from pipeline.fingerprint import file_digest
from pipeline.predict import predict
from pipeline.tracking.registry import Registration, RegistryError, register_version

from helpers import encode, free_port, git, register_flags, running_server, smooth_image, tool_env, trained_run_files

pytestmark = pytest.mark.integration

NAME = "alexnet-serve"
IMAGES = 3
# The server runs the same code on the same bytes as pipeline.predict: the same
# decode, mean subtraction and views, so what can differ is float32 arithmetic
# in the forward pass (the server's torch may use another thread count, and CPU
# kernels block their sums by it): a few float32 ulps, 3e-8 at most on the
# development machine (probabilities near 0.2, ulp 1.5e-8). The JSON reply
# carries float64 reprs, which round-trip exactly. 1e-6 leaves room for other
# kernels and still catches a wrong view or mean image (test_predict.py: one
# pixel's crop shift moves them by 3e-3).
ATOL = 1e-6
PING_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny checkpoint logged and registered by the train stage's wrapper under a parent run."""
    root = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(3)
    images = root / "images"
    images.mkdir()
    for i in range(IMAGES):
        (images / f"img{i}.jpg").write_bytes(encode(Image.fromarray(smooth_image(rng)), quality=95))

    files = trained_run_files(root, rng)
    ckpt, mean_npy, classes_tsv, inputs = files["checkpoint"], files["mean"], files["classes"], files["inputs"]

    code = root / "code"
    code.mkdir()
    git(code, "init", "-q")
    (code / "Snakefile").write_text("# the workflow\n")
    git(code, "add", ".")
    git(code, "commit", "-q", "-m", "workflow")
    (code / "Snakefile").write_text("# the workflow, edited\n")  # run with uncommitted changes

    from pipeline.tracking.parent import start_parent

    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    # artifacts inside the test's folder, not ./mlruns of whatever directory pytest runs in
    client.create_experiment("serve", artifact_location=(root / "artifacts").as_uri())
    config = {"dataset": {"name": "serve"}, "train": {"width": 0.0625, "epochs": 2}}
    parent_file = root / "results" / ".tracking" / "parent_run_id"
    start_parent(uri, "serve", parent_file, "workflow serve", {}, {}, code_dir=code, config=config)

    # the train rule's command: the stage writes train.json with its inputs' fingerprints, then the wrapper
    # logs best.pt as the model "model" and registers it
    record = root / "train" / "registered_model.json"
    stage = f"import json; json.dump({{'inputs': {inputs!r}}}, open({str(root / 'train' / 'train.json')!r}, 'w'))"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.track",
        "run",
        "--stage",
        "train",
        "--log",
        str(root / "train.log"),
        "--tracking-uri",
        uri,
        "--experiment",
        "serve",
        "--parent-file",
        str(parent_file),
        *register_flags(files, NAME, record, root / "train" / "train.json"),
        "--",
        sys.executable,
        "-c",
        stage,
        "--batch-size",
        "128",
    ]
    proc = subprocess.run(cmd, cwd=root, env=tool_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # no "Failed to log model config as params": the model's settings stay out of the run's params
    assert "warning" not in proc.stderr.lower(), proc.stderr[-4000:]
    assert (
        client.search_runs([client.get_experiment_by_name("serve").experiment_id], "attributes.run_name = 'train'")[
            0
        ].data.params["batch_size"]
        == "128"
    )
    return {
        "root": root,
        "uri": uri,
        "client": client,
        "images": sorted(images.iterdir()),
        "checkpoint": ckpt,
        "mean": mean_npy,
        "classes": classes_tsv,
        "inputs": inputs,
        "record": record,
        "code": code,
        "config": config,
        "train_stderr": proc.stderr,
    }


def test_registered_version_carries_provenance(registered):
    client, record = registered["client"], json.loads(registered["record"].read_text())
    assert record["name"] == NAME and record["version"] == "1"
    assert record["checkpoint_sha256"] == file_digest(registered["checkpoint"])
    version = client.get_model_version(NAME, record["version"])
    run = client.get_run(version.run_id)
    assert run.info.run_name == "train" and run.data.tags["registered_model"] == f"{NAME}/1"
    tags = version.tags
    assert tags["git_commit"] == git(registered["code"], "rev-parse", "HEAD") and tags["git_dirty"] == "true"
    assert {k: v for k, v in tags.items() if k.startswith("inputs.")} == {
        f"inputs.{k}": v for k, v in registered["inputs"].items()
    }
    assert set(registered["inputs"]) == {"manifest", "shards", "pca", "mean_image", "classes"}
    assert tags["checkpoint_sha256"] == record["checkpoint_sha256"]
    assert tags["config"] == f"runs:/{version.run_id}/config.yaml"
    config = client.download_artifacts(version.run_id, "config.yaml", str(registered["root"]))
    assert yaml.safe_load(open(config)) == registered["config"]
    # the parent run records the same code version
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert (parent.data.tags["git_commit"], parent.data.tags["git_dirty"]) == (tags["git_commit"], "true")


def test_registration_without_fingerprints_is_refused_by_name(registered, tmp_path):
    """train.json without "inputs" (a stage that did not record them): no version, an error naming the key."""
    client = registered["client"]
    (tmp_path / "train.json").write_text(json.dumps({"epochs": 2}))
    run_id = client.get_model_version(NAME, "1").run_id
    registration = Registration(NAME, str(tmp_path / "registered_model.json"), str(tmp_path / "train.json"))
    with pytest.raises(RegistryError, match=r"train.json has no key 'inputs'"):
        register_version(
            client,
            registered["uri"],
            run_id,
            types.SimpleNamespace(model_uri=f"runs:/{run_id}/model"),
            str(registered["checkpoint"]),
            registration,
        )
    assert [str(v.version) for v in client.search_model_versions(f"name='{NAME}'")] == ["1"]
    assert not (tmp_path / "registered_model.json").exists()


def _post(url: str, body: dict) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_served_model_answers_with_predicts_numbers(registered):
    root, port = registered["root"], free_port()
    env = tool_env(MLFLOW_TRACKING_URI=registered["uri"], OMP_NUM_THREADS="1")
    # cwd outside the repository: the served code comes from the model's own code paths
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{NAME}/latest",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with running_server(cmd, f"http://127.0.0.1:{port}/ping", root / "serve.log", PING_TIMEOUT_S, cwd=root, env=env):
        files = registered["images"]
        records = [{"image": base64.b64encode(f.read_bytes()).decode()} for f in files]
        status, reply = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": records})
        assert status == 200, reply
        rows = reply["predictions"]
        expected = predict(
            files, registered["checkpoint"], registered["mean"], registered["classes"], device="cpu", progress=False
        )
        assert len(rows) == len(expected) == IMAGES
        for row, result in zip(rows, expected):
            top = result["top"]
            assert row["class_index"][0] == top[0]["index"]
            # a near-tie would make the class order depend on the last ulp
            assert top[0]["probability"] - top[1]["probability"] > 100 * ATOL
            assert row["class_index"] == [t["index"] for t in top]
            assert row["wnid"] == [t["wnid"] for t in top] and row["names"] == [t["names"] for t in top]
            np.testing.assert_allclose(row["probability"], [t["probability"] for t in top], rtol=0, atol=ATOL)

        status, reply = _post(
            f"http://127.0.0.1:{port}/invocations",
            {"dataframe_records": [{"image": base64.b64encode(b"not an image").decode()}]},
        )
        assert status == 400 and "row 0: not an image format PIL recognises" in reply
