"""The trained network as an MLflow model that takes images and answers with classes.

Input: a pandas DataFrame with a column `image`, one encoded image (JPEG or
PNG bytes, any size, any colour mode) per row; from Python a row may instead
hold an H x W x 3 uint8 RGB array. Output: one row per image with the five
most probable classes, best first, as lists: `class_index`, `wnid`, `names`,
`probability`. (An array is already decoded at full size, while a large JPEG
given as bytes is decoded at a reduced DCT scale, as the resize stage does,
so the two can score a little differently.)

Inside, every image goes through `pipeline.predict`'s functions, so the
model gives the numbers `python -m pipeline.predict` prints: the resize
stage's `downsample`, minus the training mean image, the ten views and the
mean of their softmaxes (`pipeline.metrics.ten_crop_probs`).

The model is logged as code (MLflow's models-from-code): this file is the
model's definition, the `pipeline` and `model` packages travel with it as
code paths, and the artifacts are plain data, so loading it unpickles
nothing: the weights are a state_dict of tensors read with
`torch.load(weights_only=True)`, the model config is JSON, the mean image an
.npy without pickled objects, the class table the fetch stage's TSV.

    log_image_model(checkpoint, mean_image, classes)      # inside an active MLflow run
    model = mlflow.pyfunc.load_model("runs:/<run_id>/model")
    model.predict(pd.DataFrame({"image": [open("cat.jpg", "rb").read()]}))

`device` in the model config (load_model(..., model_config={"device": "cpu"}))
picks where the network runs: auto (default: the first GPU if torch sees one),
cpu or cuda:N; `batch_size` how many images share one forward pass. Their defaults
(DEFAULT_MODEL_CONFIG) are recorded in the model's metadata.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, Schema
from PIL import Image

from pipeline.checkpoint import load_checkpoint
from pipeline.io import read_classes
from pipeline.pca_files import load_mean_image
from pipeline.predict import Classifier, PredictError, decode_failure, ten_views, top_k

TOP = 5
OUTPUT_COLUMNS = ("class_index", "wnid", "names", "probability")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.binary, "image")]),
    outputs=Schema(
        [
            ColSpec(Array(DataType.long), "class_index"),
            ColSpec(Array(DataType.string), "wnid"),
            ColSpec(Array(DataType.string), "names"),
            ColSpec(Array(DataType.double), "probability"),
        ]
    ),
)
DEFAULT_MODEL_CONFIG = {"device": "auto", "batch_size": 16}
# what the code needs where the model is loaded; mlflow itself is added by MLflow
REQUIREMENTS = ("torch", "numpy", "pillow", "pandas", "tqdm")


def image_bytes(value) -> bytes:
    """A cell of the `image` column as encoded image bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
            raise PredictError(f"an image array must be H x W x 3 uint8 RGB; got {value.dtype} {value.shape}")
        buf = io.BytesIO()
        # PNG is lossless, so downsample sees exactly these pixels
        Image.fromarray(value, "RGB").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
    raise PredictError(f"an image must be encoded bytes or an H x W x 3 uint8 array; got {type(value).__name__}")


class ImageClassifier(PythonModel):
    def load_context(self, context) -> None:
        artifacts = context.artifacts
        config = json.loads(Path(artifacts["config"]).read_text())
        settings = {**DEFAULT_MODEL_CONFIG, **(context.model_config or {})}
        weights = torch.load(artifacts["weights"], map_location="cpu", weights_only=True)
        self.classifier = Classifier.from_weights(
            config["model"],
            weights,
            load_mean_image(artifacts["mean_image"]),
            read_classes(artifacts["classes"]),
            settings["device"],
        )
        self.batch_size = int(settings["batch_size"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "image" not in model_input:
            raise PredictError(f"the input needs a column 'image'; got columns {list(model_input.columns)}")
        rows = []
        images = list(model_input["image"])
        for start in range(0, len(images), self.batch_size):
            views = []
            for i, value in enumerate(images[start : start + self.batch_size], start):
                try:
                    data = image_bytes(value)
                except PredictError as exc:
                    raise PredictError(f"row {i}: {exc}") from exc
                try:
                    views.append(ten_views(data, self.classifier.mean_image))
                except Exception as exc:  # noqa: BLE001 - PIL raises many types for undecodable bytes
                    raise PredictError(f"row {i}: {decode_failure(exc, data)}") from exc
            for probs in self.classifier.probs(torch.stack(views)):
                top = top_k(probs, self.classifier.classes, TOP)
                rows.append(
                    {
                        "class_index": [t["index"] for t in top],
                        "wnid": [t["wnid"] for t in top],
                        "names": [t["names"] for t in top],
                        "probability": [t["probability"] for t in top],
                    }
                )
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


mlflow.models.set_model(ImageClassifier())


def _requirement(package: str) -> str:
    # a local build label (torch's +cpu, +cu130) names no version on PyPI
    return f"{package}=={metadata.version(package).split('+')[0]}"


def _example_image(mean_image: np.ndarray) -> bytes:
    """The training mean image as a JPEG: a real-looking input that every dataset has."""
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(mean_image), 0, 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def log_image_model(
    checkpoint: str | os.PathLike, mean_image: str | os.PathLike, classes: str | os.PathLike, name: str = "model"
):
    """Log the checkpoint's network as this pyfunc model in the active MLflow run; returns MLflow's ModelInfo."""
    state = load_checkpoint(checkpoint)
    # the same checks predict makes: a model that loads must answer with the right classes
    Classifier.from_state(state, checkpoint, mean_image, classes, device="cpu")
    package = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "weights.pt"  # tensors only: loads with weights_only=True
        torch.save({k: v.detach().cpu().contiguous() for k, v in state["model"].items()}, weights)
        config = tmp / "config.json"
        config.write_text(
            json.dumps(
                {
                    "model": state["config"]["model"],
                    "augment": state["config"].get("augment", {}),
                    "epoch": state.get("epoch"),
                    "step": state.get("step"),
                    "best": state.get("best"),
                },
                indent=2,
            )
            + "\n"
        )
        artifacts = {
            "weights": str(weights),
            "config": str(config),
            "mean_image": str(shutil.copyfile(mean_image, tmp / "mean_image.npy")),
            "classes": str(shutil.copyfile(classes, tmp / "classes.tsv")),
        }
        code = []
        for pkg in ("pipeline", "model"):  # without caches: they are bytecode of this interpreter only
            code.append(
                str(
                    shutil.copytree(
                        package.parent / pkg, tmp / "code" / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                )
            )
        example = pd.DataFrame({"image": [_example_image(load_mean_image(mean_image))]})
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).resolve()),
            artifacts=artifacts,
            code_paths=code,
            # the defaults go in the metadata, not model_config: MLflow logs a model_config as params of
            # the run, where its batch_size (images per forward pass) collides with the training's
            signature=SIGNATURE,
            input_example=example,
            metadata={"model_config_defaults": DEFAULT_MODEL_CONFIG},
            pip_requirements=[_requirement(p) for p in REQUIREMENTS],
        )
