"""Classify image files with a trained checkpoint, by the paper's test procedure.

    python -m pipeline.predict IMAGE_OR_FOLDER [...] [--checkpoint results/train/checkpoints/best.pt]
        [--mean-image results/pca/mean_image.npy] [--classes results/fetch/classes.tsv]
        [--centre] [--json] [--top 5] [--batch-size 16] [--device auto|cpu|cuda:N]

Each image (JPEG or PNG, any size; grayscale, CMYK and palette images are
converted to RGB) goes through exactly what a validation image goes through:
the resize stage's `downsample` (shorter side to 256, central 256x256 patch),
minus the training mean image, then the ten 224x224 views of the evaluate
stage (four corners, centre, and their reflections) and the mean of their
ten softmax outputs (`pipeline.metrics.ten_crop_probs`); `--centre` scores
the centre view alone. The top classes are printed as a table per image, or
as one JSON array with `--json`.

A folder is searched recursively for .jpg, .jpeg and .png files (any case);
a file named on the command line is read whatever its extension. A file that
cannot be read or decoded is reported on stderr as `error: FILE: reason` and
the others go on; the exit status is 1 when any file failed.

The functions that turn image bytes into the network's input, and the top-k
table, are shared with the MLflow model (pipeline/image_model.py), so the
served model and this command give the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import UnidentifiedImageError
from tqdm import tqdm

from model.alexnet import INPUT_SIZE
from pipeline.checkpoint import CheckpointError, build_model, load_checkpoint, model_from_state
from pipeline.errors import PipelineError
from pipeline.fingerprint import file_digest
from pipeline.images import downsample
from pipeline.io import read_classes
from pipeline.layout import Results
from pipeline.metrics import CENTER_VIEW, ten_crop_probs
from pipeline.pca_files import load_mean_image
from pipeline.shards import IMAGE_SIZE

SIZE = IMAGE_SIZE  # the resize stage's square (paper, section 2)
CROP = INPUT_SIZE  # the network's input (paper, section 4.1)
# (x, y) of the five patches in the order of pipeline.metrics: TL, TR, BL, BR, centre;
# the evaluate loader's crop positions 0, 1 and 0.5 of the 32-pixel margin
PATCHES = [
    (0, 0),
    (SIZE - CROP, 0),
    (0, SIZE - CROP),
    (SIZE - CROP, SIZE - CROP),
    ((SIZE - CROP) // 2, (SIZE - CROP) // 2),
]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# The demo's and the ImageNet preset's results tree (paths.results: results)
DEFAULTS = {"checkpoint": Results().train().best, "mean_image": Results().mean_image, "classes": Results().classes}


class PredictError(PipelineError, ValueError):
    """An input of the whole run (checkpoint, mean image, classes, device) that cannot work."""


# ---------------------------------------------------------------- one image


def normalized_image(data: bytes, mean_image: np.ndarray) -> np.ndarray:
    """Encoded image -> float32 (256, 256, 3): the resize stage's square minus the mean image.

    The subtraction is in float32 on the uint8 pixels, as the evaluate
    loader does it, so the same decoded pixels give bit-identical inputs.
    Raises what PIL raises for data it cannot decode.
    """
    pixels = np.asarray(downsample(data, SIZE), dtype=np.uint8)
    return pixels.astype(np.float32) - mean_image


def ten_views(data: bytes, mean_image: np.ndarray) -> torch.Tensor:
    """Encoded image -> (10, 3, 224, 224) float32: the five patches, then the same five mirrored."""
    x = torch.from_numpy(normalized_image(data, mean_image)).permute(2, 0, 1)
    patches = [x[:, y : y + CROP, x0 : x0 + CROP] for x0, y in PATCHES]
    return torch.stack(patches + [p.flip(-1) for p in patches]).contiguous()


def decode_failure(exc: Exception, data: bytes) -> str:
    """Why `ten_views` could not use these bytes, in words that fit after a file name."""
    if not data:
        return "empty file"
    if isinstance(exc, UnidentifiedImageError):  # its own message names a BytesIO object
        return "not an image format PIL recognises (JPEG and PNG are)"
    return f"not a readable image ({type(exc).__name__}: {exc})"


def top_k(probs, classes: list[dict], k: int = 5) -> list[dict]:
    """The k most probable classes of one softmax row: index, wnid, names, probability.

    Equal probabilities are listed in class-index order, so the table is
    the same on every machine.
    """
    p = np.asarray(probs, dtype=np.float64)
    order = np.lexsort((np.arange(len(p)), -p))[:k]
    return [
        {"index": int(i), "wnid": classes[i]["wnid"], "names": classes[i]["names"], "probability": float(p[i])}
        for i in order
    ]


def format_table(name: str, rows: list[dict]) -> str:
    """A file name and its top classes as an aligned plain-text table."""
    header = f"{'rank':>4}  {'probability':>11}  {'index':>5}  {'wnid':<9}  names"
    lines = [name, "  " + header]
    for rank, r in enumerate(rows, 1):
        lines.append(f"  {rank:>4}  {r['probability']:>11.6f}  {r['index']:>5}  {r['wnid']:<9}  {r['names']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the network


def resolve_device(spec: str) -> str:
    """auto (the first GPU if torch sees one, else the CPU), cpu or cuda:N."""
    spec = str(spec).strip()
    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = "cuda:0"
    if spec != "cpu" and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise PredictError(f"--device {spec!r}: expected auto, cpu or cuda:N")
    if spec != "cpu":
        if not torch.cuda.is_available():
            raise PredictError(f"--device {spec}: torch sees no GPU; use cpu or auto")
        if int(spec[5:]) >= torch.cuda.device_count():
            raise PredictError(f"--device {spec}: torch sees {torch.cuda.device_count()} GPU(s)")
    return spec


def check_normalization(config: dict, where: str) -> None:
    """Only the paper's mean-image normalisation is applied here; refuse a model trained otherwise."""
    normalize = config.get("augment", {}).get("normalize", "mean_image")
    if normalize != "mean_image":
        raise PredictError(
            f"{where} was trained with augment.normalize={normalize!r}; prediction applies "
            "the paper's mean-image normalisation only (augment.normalize: mean_image)"
        )


def check_fingerprint(config: dict, name: str, path: str | os.PathLike, checkpoint: str | os.PathLike) -> None:
    """A mean image or class table other than the training's would give wrong answers silently."""
    expected = config.get("inputs", {}).get(name)
    if expected and file_digest(path) != expected:
        raise PredictError(
            f"{path} is not the {name.replace('_', ' ')} checkpoint {checkpoint} was trained "
            f"with (its sha256 differs from the checkpoint's record); pass that training's file"
        )


def load_classes(path: str | os.PathLike, num_classes: int) -> list[dict]:
    try:
        classes = read_classes(path)
    except (OSError, KeyError, ValueError) as exc:
        raise PredictError(f"class table {path} cannot be read ({exc}); run the fetch stage first") from exc
    return check_class_count(classes, num_classes, str(path))


def check_class_count(classes: list[dict], num_classes: int, where: str) -> list[dict]:
    if len(classes) != num_classes:
        raise PredictError(
            f"{where} lists {len(classes)} classes but the model has {num_classes} outputs; "
            "pass the class table of the dataset it was trained on"
        )
    return classes


@dataclass
class Classifier:
    """A network in eval mode with what its inputs and outputs need: the mean image and the class table."""

    model: torch.nn.Module
    mean_image: np.ndarray
    classes: list[dict]

    @classmethod
    def from_checkpoint(cls, checkpoint, mean_image, classes, device: str = "auto") -> Classifier:
        device = resolve_device(device)
        try:
            state = load_checkpoint(checkpoint)
        except CheckpointError as exc:
            raise PredictError(str(exc)) from exc
        return cls.from_state(state, checkpoint, mean_image, classes, device)

    @classmethod
    def from_state(cls, state: dict, checkpoint, mean_image, classes, device: str = "auto") -> Classifier:
        """`from_checkpoint` for a checkpoint already loaded (`checkpoint`, its file, names it in errors)."""
        try:
            model, meta = model_from_state(state, checkpoint, devices=[resolve_device(device)])
        except CheckpointError as exc:
            raise PredictError(str(exc)) from exc
        config = meta["config"]
        check_normalization(config, f"checkpoint {checkpoint}")
        for name, path in (("mean_image", mean_image), ("classes", classes)):
            if not Path(path).is_file():
                raise PredictError(
                    f"{path} does not exist; run the {'pca' if name == 'mean_image' else 'fetch'} "
                    "stage first or pass --" + name.replace("_", "-")
                )
            check_fingerprint(config, name, path, checkpoint)
        return cls(model, load_mean_image(mean_image), load_classes(classes, config["model"]["num_classes"]))

    @classmethod
    def from_weights(
        cls, model_config: dict, state_dict: dict, mean_image: np.ndarray, classes: list[dict], device: str = "auto"
    ) -> Classifier:
        model = build_model(model_config, [resolve_device(device)])
        model.load_state_dict(state_dict)
        model.eval()
        return cls(model, mean_image, check_class_count(classes, model_config["num_classes"], "the class table"))

    @torch.inference_mode()
    def probs(self, views: torch.Tensor, centre: bool = False) -> torch.Tensor:
        """(N, 10, 3, 224, 224) views -> (N, C) float32 softmax on the CPU: ten-crop mean, or the centre view's."""
        views = views.to(self.model.input_device)
        if centre:  # one forward of the centre patch instead of ten
            return torch.softmax(self.model(views[:, CENTER_VIEW]).float(), dim=1).cpu()
        return ten_crop_probs(self.model, views)[0].cpu()


# ---------------------------------------------------------------- files


def image_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files named, and the images under folders named (sorted), in the order given."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            files.append(path)  # a missing file becomes that file's error, not the run's
    return files


def _read_views(path: Path, mean_image: np.ndarray) -> torch.Tensor | str:
    """The file's ten views, or the reason it cannot give them."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    try:
        return ten_views(data, mean_image)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for undecodable bytes; each is this file's fault
        return decode_failure(exc, data)


def predict(
    inputs: list[str | os.PathLike],
    checkpoint=DEFAULTS["checkpoint"],
    mean_image=DEFAULTS["mean_image"],
    classes=DEFAULTS["classes"],
    centre: bool = False,
    top: int = 5,
    batch_size: int = 16,
    device: str = "auto",
    progress: bool = True,
    on_error=None,
) -> list[dict]:
    """Top classes per image file: [{"file", "top": [{index, wnid, names, probability}, ...]} or {"file", "error"}].

    Files are decoded one at a time and scored `batch_size` at once;
    `on_error(file, reason)` is called as a file fails.
    """
    clf = Classifier.from_checkpoint(checkpoint, mean_image, classes, device)
    files = image_files(inputs)
    if not files:
        raise PredictError(f"no images (.jpg, .jpeg, .png) in {', '.join(map(str, inputs))}")
    results: list[dict] = []
    pending: list[tuple[int, torch.Tensor]] = []

    def flush():
        if pending:
            probs = clf.probs(torch.stack([v for _, v in pending]), centre=centre)
            for (i, _), row in zip(pending, probs):
                results[i]["top"] = top_k(row, clf.classes, top)
            pending.clear()

    with tqdm(
        total=len(files), unit="img", desc="predict", file=sys.stderr, leave=False, disable=None if progress else True
    ) as bar:
        for path in files:
            results.append({"file": str(path)})
            views = _read_views(path, clf.mean_image)
            if isinstance(views, str):
                results[-1]["error"] = views
                if on_error:
                    on_error(str(path), views)
            else:
                pending.append((len(results) - 1, views))
                if len(pending) == batch_size:
                    flush()
            bar.update(1)
        flush()
    return results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders of images")
    p.add_argument("--checkpoint", default=DEFAULTS["checkpoint"], help="a training checkpoint (default: %(default)s)")
    p.add_argument(
        "--mean-image", default=DEFAULTS["mean_image"], help="the pca stage's mean image (default: %(default)s)"
    )
    p.add_argument(
        "--classes", default=DEFAULTS["classes"], help="the fetch stage's class table (default: %(default)s)"
    )
    p.add_argument("--centre", action="store_true", help="score the centre 224 patch only instead of ten views")
    p.add_argument("--json", action="store_true", help="print one JSON array instead of tables")
    p.add_argument("--top", type=int, default=5, help="classes listed per image (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=16, help="images per forward pass, 10 views each (default: %(default)s)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda:N (default: %(default)s)")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top must be at least 1, got {args.top}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def report(name: str, reason: str) -> None:
        tqdm.write(f"error: {name}: {reason}", file=sys.stderr)

    try:
        results = predict(
            args.inputs,
            args.checkpoint,
            args.mean_image,
            args.classes,
            centre=args.centre,
            top=args.top,
            batch_size=args.batch_size,
            device=args.device,
            on_error=report,
        )
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=2))
    elif any("top" in r for r in results):
        print("\n\n".join(format_table(r["file"], r["top"]) for r in results if "top" in r))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
