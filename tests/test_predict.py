"""Using the trained network: pipeline.predict and the MLflow image model against the evaluate stage.

One tiny checkpoint (width 0.0625, 6 classes) and four validation JPEGs in a
shard; the evaluate stage's loader and `ten_crop_probs` give the reference
per-image probabilities, which the command, its function and the logged
model must reproduce from the same JPEG files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.checkpoint import model_from_checkpoint
from pipeline.evaluate import make_loader
from pipeline.metrics import ten_crop_probs
from pipeline.predict import PredictError, main, predict
from pipeline.shards import ShardWriter

from helpers import AUGMENT, encode, smooth_image, trained_run_files

pytestmark = pytest.mark.integration

NUM_CLASSES = 6
IMAGES = 4
# Both paths feed the network bit-identical views (the same libjpeg decode of
# the same bytes, the same float32 subtraction of the mean image, exact crops
# and flips), so what differs is float32 arithmetic in the forward pass: the
# evaluate loader scores 3 images (30 views) per call, predict 4 (40 views),
# and the CPU convolution kernels may block and sum differently for another
# batch size. That moves logits of magnitude ~1 by a few float32 ulps (~1e-7)
# and the probabilities by as much: 4.5e-8 at most on the development machine,
# so 1e-6 leaves room for other kernels and still catches a wrong crop or
# normalisation (one pixel's crop shift moves them by 3e-3 here, a mean image
# off by one level by 3e-4).
ATOL = 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(1)
    jpegs = [encode(Image.fromarray(smooth_image(rng)), quality=95) for _ in range(IMAGES)]
    keys = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(IMAGES)]
    files = root / "images"
    files.mkdir()
    for key, jpeg in zip(keys, jpegs):
        (files / f"{key}.JPEG").write_bytes(jpeg)

    run = trained_run_files(root, rng, NUM_CLASSES)
    ckpt, mean_npy, classes_tsv = run["checkpoint"], run["mean"], run["classes"]
    tar = root / "shards" / "val-00000.tar"
    with ShardWriter(tar) as w:
        for i, (key, jpeg) in enumerate(zip(keys, jpegs)):
            w.add(key, jpeg, i % NUM_CLASSES)

    # the evaluate stage's numbers: its DALI loader's ten views through ten_crop_probs
    model, _ = model_from_checkpoint(ckpt, devices=["cpu"])
    loader = make_loader([str(tar)], run["pca"], mean_npy, AUGMENT, 3, "cpu", threads=1)
    ten, centre = {}, {}
    with torch.inference_mode():
        for views, _labels, batch_keys in loader:
            p10, pc = ten_crop_probs(model, views)
            ten.update(zip(batch_keys, p10.numpy()))
            centre.update(zip(batch_keys, pc.numpy()))
    loader.close()
    reference = {"ten": np.stack([ten[k] for k in keys]), "centre": np.stack([centre[k] for k in keys])}
    assert np.abs(reference["ten"] - reference["centre"]).max() > 1e-3  # the ten views really differ
    for probs in reference.values():  # top-1 comparisons need a clear winner
        top2 = np.sort(probs, axis=1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0]).min() > 100 * ATOL, "near-tie at top-1; change the fixture's seed"

    # other inputs: grayscale and CMYK JPEGs, a palette PNG, not square and larger than 256
    odd = root / "odd"
    odd.mkdir()
    rgb = Image.fromarray(smooth_image(rng, (300, 400)))
    (odd / "gray.jpg").write_bytes(encode(rgb.convert("L"), quality=95))
    (odd / "cmyk.jpg").write_bytes(encode(rgb.convert("CMYK"), quality=95))
    (odd / "palette.png").write_bytes(encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"))
    (odd / "corrupt.jpg").write_bytes(jpegs[0][:200])  # a truncated JPEG
    return {
        "root": root,
        "files": files,
        "keys": keys,
        "jpegs": jpegs,
        "odd": odd,
        "checkpoint": ckpt,
        "mean": mean_npy,
        "classes": classes_tsv,
        "reference": reference,
    }


def _run(data, inputs, **kw):
    return predict(inputs, data["checkpoint"], data["mean"], data["classes"], device="cpu", progress=False, **kw)


def _probs(result: dict) -> np.ndarray:
    """A result's top-k as a dense probability row (classes outside the top k left at 0)."""
    row = np.zeros(NUM_CLASSES)
    for t in result["top"]:
        row[t["index"]] = t["probability"]
    return row


def _cli_inputs(data) -> list[str]:
    """The command's options for the fixture's checkpoint, mean image and classes, on the CPU."""
    inputs = ["--checkpoint", str(data["checkpoint"]), "--mean-image", str(data["mean"])]
    return inputs + ["--classes", str(data["classes"]), "--device", "cpu"]


def test_predict_gives_the_evaluate_stage_probabilities(data):
    ref = data["reference"]
    for centre, expected in ((False, ref["ten"]), (True, ref["centre"])):
        results = _run(data, [data["files"]], centre=centre, top=NUM_CLASSES, batch_size=4)
        assert [os.path.basename(r["file"]) for r in results] == [f"{k}.JPEG" for k in data["keys"]]
        got = np.stack([_probs(r) for r in results])
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
        assert [r["top"][0]["index"] for r in results] == expected.argmax(1).tolist()
        assert all(r["top"][0]["wnid"] == f"n{r['top'][0]['index']:08d}" for r in results)
        assert all(
            [t["probability"] for t in r["top"]] == sorted((t["probability"] for t in r["top"]), reverse=True)
            for r in results
        )


def test_grayscale_cmyk_and_png_inputs_and_a_corrupt_file(data):
    odd = data["odd"]
    errors = []
    results = _run(data, [odd], on_error=lambda f, why: errors.append((f, why)))
    by_name = {os.path.basename(r["file"]): r for r in results}
    assert sorted(by_name) == ["cmyk.jpg", "corrupt.jpg", "gray.jpg", "palette.png"]
    assert errors == [(str(odd / "corrupt.jpg"), by_name["corrupt.jpg"]["error"])]
    assert "truncated" in errors[0][1].lower()
    # each colour mode is scored as its RGB conversion: the same pixels saved losslessly as RGB
    for name in ("gray.jpg", "cmyk.jpg", "palette.png"):
        assert len(by_name[name]["top"]) == 5
        rgb = odd.parent / f"{name}.rgb.png"
        rgb.write_bytes(encode(Image.open(odd / name).convert("RGB"), "PNG"))
        again = _run(data, [rgb])[0]
        np.testing.assert_allclose(_probs(by_name[name]), _probs(again), rtol=0, atol=ATOL)


def test_cli_table_json_and_exit_status(data, capsys):
    files = [str(data["files"] / f"{k}.JPEG") for k in data["keys"]]
    common = _cli_inputs(data)
    assert main(files[:2] + common + ["--top", "3"]) == 0
    out = capsys.readouterr().out
    top1 = data["reference"]["ten"].argmax(1)
    assert out.count("rank  probability  index  wnid") == 2 and f"n{top1[0]:08d}" in out
    first = out.split("\n\n")[0].splitlines()
    assert first[0] == files[0] and len(first) == 2 + 3 and first[2].split()[:1] == ["1"]
    assert int(first[2].split()[2]) == top1[0]

    # as a command: a folder with a corrupt file among good ones fails that file only, exit status 1
    cmd = [sys.executable, "-m", "pipeline.predict", str(data["odd"]), files[1], "--json"] + common
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [("error" in r) for r in results] == [False, True, False, False, False]
    assert f"error: {data['odd'] / 'corrupt.jpg'}: not a readable image" in proc.stderr
    top = results[-1]["top"]
    assert top[0]["index"] == top1[1]
    np.testing.assert_allclose(
        [t["probability"] for t in top], data["reference"]["ten"][1][[t["index"] for t in top]], rtol=0, atol=ATOL
    )


def test_wrong_inputs_are_named(data, tmp_path, capsys):
    other_mean = tmp_path / "mean.npy"
    np.save(other_mean, np.zeros((256, 256, 3), np.float32))
    with pytest.raises(PredictError, match="mean.npy is not the mean image .* was trained with"):
        predict([data["files"]], data["checkpoint"], other_mean, data["classes"], device="cpu")
    assert main([str(tmp_path), *_cli_inputs(data)]) == 1
    assert "error: no images (.jpg, .jpeg, .png) in" in capsys.readouterr().err
    assert main([str(data["files"]), "--checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"]) == 1
    assert "none.pt does not exist" in capsys.readouterr().err


LOAD_AND_PREDICT = """
import json, sys
import mlflow, numpy as np, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
import pipeline
images = [open(f, "rb").read() for f in sys.argv[2:]]
out = model.predict(pd.DataFrame({"image": images}))
arr = np.asarray(__import__("PIL.Image").Image.open(sys.argv[2]).convert("RGB"))
from_array = model.predict(pd.DataFrame({"image": [arr]}))
try:
    model.predict(pd.DataFrame({"image": images[:1] + [b"not an image"]}))
    bad = None
except Exception as exc:
    bad = str(exc)
print(json.dumps({"pipeline": pipeline.__file__, "out": json.loads(out.to_json(orient="records", double_precision=15)),
                  "from_array": from_array["probability"][0], "bad": bad}))
"""


def test_logged_model_loads_in_a_fresh_process_and_matches(data, tmp_path, monkeypatch, capfd):
    import mlflow
    from mlflow import MlflowClient

    from pipeline.tracking.registry import ModelFiles, log_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # log_model sets it; undone after the test
    client = MlflowClient(uri)
    exp = client.create_experiment("predict", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    # log_model sets the process's tracking URI, as the track wrapper's process wants; not the other tests
    before = mlflow.tracking._tracking_service.utils._tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        log_model(uri, run_id, ModelFiles(str(data["checkpoint"]), str(data["mean"]), str(data["classes"])))
    finally:
        mlflow.set_tracking_uri(before)
    logged = capfd.readouterr().err
    assert "Validating input example" in logged  # MLflow's log reaches us, and it says nothing of pickling
    assert "pickle" not in logged.lower()
    client.set_terminated(run_id)
    model_dir = tmp_path / "artifacts"
    weights = next(model_dir.rglob("weights.pt"))
    assert set(torch.load(weights, weights_only=True)) == set(torch.load(data["checkpoint"])["model"])
    assert not list(model_dir.rglob("*.pkl")) and not list(model_dir.rglob("__pycache__"))

    files = [str(data["files"] / f"{k}.JPEG") for k in data["keys"]] + [
        str(data["odd"] / "gray.jpg"),
        str(data["odd"] / "cmyk.jpg"),
        str(data["odd"] / "palette.png"),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1")
    # cwd outside the repository: the code must come from the model's own code paths
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, f"runs:/{run_id}/model", *files],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/code/pipeline/" in got["pipeline"] and not got["pipeline"].startswith(str(data["root"]))

    ref = data["reference"]["ten"]
    rows = got["out"]
    assert len(rows) == len(files)
    for i, row in enumerate(rows[:IMAGES]):
        assert row["class_index"] == np.argsort(-ref[i], kind="stable")[:5].tolist()
        assert row["wnid"] == [f"n{c:08d}" for c in row["class_index"]]
        assert row["names"][0] == f"class {row['class_index'][0]}, thing"
        np.testing.assert_allclose(row["probability"], ref[i][row["class_index"]], rtol=0, atol=ATOL)
    # the colour modes and the PNG: the numbers predict gives for the same files
    for row, result in zip(rows[IMAGES:], _run(data, files[IMAGES:])):
        assert row["class_index"] == [t["index"] for t in result["top"]]
        np.testing.assert_allclose(row["probability"], [t["probability"] for t in result["top"]], rtol=0, atol=ATOL)
    # an already decoded 256x256 image: the same pixels as its JPEG, so the same numbers
    np.testing.assert_allclose(got["from_array"], rows[0]["probability"], rtol=0, atol=ATOL)
    assert got["bad"] and "row 1: not an image format PIL recognises" in got["bad"]
