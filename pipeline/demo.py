"""A small ILSVRC-2012-shaped dataset, drawn from a seed, in the official formats.

    python -m pipeline.demo --out-dir data/demo --seed 0 --classes 10 \
        --train-per-class 100 --val-per-class 20 --large-fraction 0.1 \
        [--sizes demo|imagenet] [--workers N]

writes, byte for byte the same for the same arguments (whatever --workers):
- ILSVRC2012_img_train.tar: one <wnid>.tar per class, each of <wnid>_<n>.JPEG;
- ILSVRC2012_img_val.tar: flat ILSVRC2012_val_<8 digits>.JPEG, classes mixed;
- ILSVRC2012_devkit_t12.tar.gz: data/meta.mat (struct array `synsets` with
  the real fields; leaves first with ILSVRC2012_ID 1..N, then a few non-leaf
  ancestors) and data/ILSVRC2012_validation_ground_truth.txt;
- MD5SUMS (md5sum format) and demo.json (settings, counts of images, quirks
  and sizes, bytes, seconds).

The classes are real ILSVRC-2012 wnids: the ten Imagenette classes, 90 more,
then (up to 1000) the rest of the 1000 in sorted-wnid order, with their words
and gloss from pipeline/data/ilsvrc2012_classes.tsv. With all 1000 classes the
ILSVRC2012_IDs are the devkit's own; a subset has no order of its own, so it
gets a seeded permutation that is never sorted-wnid order, as in the real
devkit, so the ID -> sorted-index mapping is exercised.

Each class has its own look: up to 100 classes, a hue of its own, a shape and
stripes at a class angle; beyond 100, hues that close would be unlearnable,
so a factorised code takes over (10 hue bins x 8 shapes x 13 textures).
Position, scale, rotation, background colour and noise are random per image,
so no single pixel gives the class away but a small CNN learns it.

sizes `demo` (the default): long sides 300-500 px, a share (large_fraction)
1001-1600 px, and in train one CMYK JPEG, one grayscale JPEG and one PNG
named .JPEG, in val one grayscale JPEG, as the real set has. sizes
`imagenet`, for a rehearsal of the real run: ImageNet's mix of sizes and
aspect ratios with a multi-megapixel tail, and the quirks at their real
rarity (at least one of each per split). `demo` images are drawn at most
512 px and upscaled, which keeps them cheap; `imagenet` images are drawn at
their own size with a photograph's density of detail (clutter, fine texture),
so their JPEGs carry ImageNet's bytes per file and reading them costs what
ImageNet's do (draw_photo).
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import gzip
import hashlib
import io
import math
import multiprocessing
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageChops, ImageDraw

from pipeline.devkit import DEVKIT_DIR, GROUND_TRUTH, META, SYNSET_FIELDS, val_file_name
from pipeline.errors import PipelineError, run_cli
from pipeline.io import atomic_path, write_json
from pipeline.schema import defaults

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEMO = defaults("demo")  # the config schema is the one home of defaults
MTIME = 1338508800  # 2012-06-01 UTC: a fixed timestamp keeps the archives byte-identical
CANVAS = 512  # images are drawn at most this size, then upscaled
SMALL_SIDE = (300, 500)  # long side of ordinary images, as in most of ImageNet
LARGE_SIDE = (1001, 1600)
JPEG_QUALITY = 90
SIZES = ("demo", "imagenet")

# sizes: imagenet. Long side 500 px (Flickr's "medium" size, most of ILSVRC) is the mode; a share is smaller,
# large_fraction is over 1000 px and a fifth of those are camera originals of several megapixels. Over
# 10,000 draws of image_size with large_fraction 0.03 (seed 0): mean 421 x 364 px, 2.9 % over 1000 px,
# 62 camera originals (0.6 %, 5.3 MP or more), 39 % at 500 px, 22 % portrait, median 379 x 333. The
# quoted ILSVRC mean is about 400 x 350; a 500 px share of 26 % would meet it, but 500 px would then be
# the common case no longer, and the tail over 1000 px, which sets the cost of reading, is the same.
MEDIUM_SIDE = 500
MEDIUM_SHARE = 0.4  # of the images not over 1000 px
SMALLER_SIDE = (150, 500)
IMAGENET_LARGE_SIDE = (1001, 2601)
MULTI_MP_SIDE = (2800, 4501)  # at 3:2 or squarer, 2800 px on the long side is over 5 MP
MULTI_MP_SHARE = 0.2  # of the large images
MULTI_MP_PIXELS = 3_000_000
ASPECTS = (4 / 3, 3 / 2, 1.0, 5 / 4)
ASPECT_WEIGHTS = (0.5, 0.3, 0.1, 0.1)  # 4:3 and 3:2 cameras dominate Flickr
PORTRAIT_SHARE = 0.25

# Quirks of the real train set (1,281,167 images): 22 CMYK JPEGs and one PNG named .JPEG (the lists in
# TensorFlow's models/research/inception build_imagenet_data.py, from github.com/cytsai/ilsvrc-cmyk-image-list).
# No sourced count of its grayscale JPEGs was found, so the rate is 0 and each split keeps the one
# every split carries anyway. Val takes the same rates: its one CMYK JPEG in 50,000 (the same list)
# matches, and it has no PNG, but the rehearsal reads one in each split. sizes: demo keeps its fixed
# quirks (DEMO_QUIRKS).
ILSVRC_TRAIN_IMAGES = 1_281_167
QUIRK_RATES = {"cmyk": 22 / ILSVRC_TRAIN_IMAGES, "gray": 0.0, "png": 1 / ILSVRC_TRAIN_IMAGES}
DEMO_QUIRKS = (("cmyk", "gray", "png"), ("gray",))  # train, val

# sizes: imagenet, bytes. ILSVRC2012_img_train.tar is 147,897,477,120 bytes (the "138 GB" archive, the size
# pipeline/forecast.py carries) for 1,281,167 images: 115.4 kB a file with its tar header, about 114.7 kB of
# JPEG. Decoding costs what the entropy-coded bytes cost, so the rehearsal's files carry that rate, through
# their content: draw_photo draws every image at its own size with clutter (CLUTTER strokes whose size
# follows the image) and a fine texture (TEXTURE_*, at the pixel scale). Only the mean is published; the
# split is this module's: 0.51 B/px at 500 px, 0.44 B/px over 1000 px (a camera original has less detail
# per pixel than a downscaled "medium" photo). Half of all pixels lie in the tail over 1000 px, so the
# mean file follows it: 122 kB a file in the preflight's 10,000 training images (seed 0), 0.48 B/px
# (bench/generated_bytes.py; bench/RESULTS-scale.md, "Generated images at ImageNet's byte rate").
TEXTURE_TILE = 1024  # the texture is one seeded tile (cut at a random offset, repeated past 1024 px)
TEXTURE_LUMA = 10.0  # per-pixel grain, grey levels (all three channels alike)
TEXTURE_OCTAVES = ((2, 12.0), (4, 8.0), (8, 6.0), (16, 6.0), (32, 6.0))  # (px, grey levels): a 1/f-like mottle
TEXTURE_CHROMA = 5.0  # per-channel grain, grey levels
CLUTTER = 150  # strokes on the background, each a dull colour

GLOSS_NOT_KEPT = "an ILSVRC-2012 class (the demo keeps its wnid and words, not its gloss)"
# (wnid, words, gloss, living): real ImageNet synsets; the Imagenette ten first. The demo's first 100
# classes, fixed so that demos of up to 100 classes keep their bytes.
DEMO_CLASSES = [
    ("n01440764", "tench, Tinca tinca", "freshwater dace-like game fish of Europe and western Asia", True),
    ("n02102040", "English springer, English springer spaniel", "a breed of springer spaniel", True),
    ("n02979186", "cassette player", "electronic equipment for playing cassettes", False),
    ("n03000684", "chain saw, chainsaw", "portable power saw; teeth linked to form an endless chain", False),
    ("n03028079", "church, church building", "a place for public (especially Christian) worship", False),
    ("n03394916", "French horn, horn", "a brass musical instrument with a coiled conical tube", False),
    ("n03417042", "garbage truck, dustcart", "a truck for collecting domestic refuse", False),
    (
        "n03425413",
        "gas pump, gasoline pump, petrol pump, island dispenser",
        "a pump in a service station that draws gasoline from underground storage tanks",
        False,
    ),
    ("n03445777", "golf ball", "a small hard ball used in playing golf", False),
    ("n03888605", "parachute, chute", "rescue equipment that fills with air and retards your fall", False),
    ("n01443537", "goldfish, Carassius auratus", "small golden or orange-red freshwater fishes", True),
    (
        "n01484850",
        "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
        "large aggressive shark widespread in warm seas",
        True,
    ),
    ("n01491361", "tiger shark, Galeocerdo cuvieri", "large dangerous warm-water shark with striped body", True),
    ("n01494475", "hammerhead, hammerhead shark", "shark with eyes at either end of a hammer-shaped head", True),
    (
        "n01496331",
        "electric ray, crampfish, numbfish, torpedo",
        "ray with electric organs on each side of the head",
        True,
    ),
    ("n01498041", "stingray", "large venomous ray with barbed spines near the base of a whiplike tail", True),
    ("n01514668", "cock", "adult male chicken", True),
    ("n01514859", "hen", "adult female chicken", True),
    ("n01518878", "ostrich, Struthio camelus", "fast-running African flightless bird; largest living bird", True),
    ("n01530575", "brambling, Fringilla montifringilla", "Eurasian finch", True),
    # ILSVRC-2012 classes 11-90 in sorted-wnid order (wnids and words as in the devkit's meta.mat), so a
    # demo of up to 100 classes is a harder set for trainability runs (bench/RESULTS-train.md)
    ("n01531178", "goldfinch, Carduelis carduelis", GLOSS_NOT_KEPT, True),
    ("n01532829", "house finch, linnet, Carpodacus mexicanus", GLOSS_NOT_KEPT, True),
    ("n01534433", "junco, snowbird", GLOSS_NOT_KEPT, True),
    ("n01537544", "indigo bunting, indigo finch, indigo bird, Passerina cyanea", GLOSS_NOT_KEPT, True),
    ("n01558993", "robin, American robin, Turdus migratorius", GLOSS_NOT_KEPT, True),
    ("n01560419", "bulbul", GLOSS_NOT_KEPT, True),
    ("n01580077", "jay", GLOSS_NOT_KEPT, True),
    ("n01582220", "magpie", GLOSS_NOT_KEPT, True),
    ("n01592084", "chickadee", GLOSS_NOT_KEPT, True),
    ("n01601694", "water ouzel, dipper", GLOSS_NOT_KEPT, True),
    ("n01608432", "kite", GLOSS_NOT_KEPT, True),
    ("n01614925", "bald eagle, American eagle, Haliaeetus leucocephalus", GLOSS_NOT_KEPT, True),
    ("n01616318", "vulture", GLOSS_NOT_KEPT, True),
    ("n01622779", "great grey owl, great gray owl, Strix nebulosa", GLOSS_NOT_KEPT, True),
    ("n01629819", "European fire salamander, Salamandra salamandra", GLOSS_NOT_KEPT, True),
    ("n01630670", "common newt, Triturus vulgaris", GLOSS_NOT_KEPT, True),
    ("n01631663", "eft", GLOSS_NOT_KEPT, True),
    ("n01632458", "spotted salamander, Ambystoma maculatum", GLOSS_NOT_KEPT, True),
    ("n01632777", "axolotl, mud puppy, Ambystoma mexicanum", GLOSS_NOT_KEPT, True),
    ("n01641577", "bullfrog, Rana catesbeiana", GLOSS_NOT_KEPT, True),
    ("n01644373", "tree frog, tree-frog", GLOSS_NOT_KEPT, True),
    ("n01644900", "tailed frog, bell toad, ribbed toad, tailed toad, Ascaphus trui", GLOSS_NOT_KEPT, True),
    ("n01664065", "loggerhead, loggerhead turtle, Caretta caretta", GLOSS_NOT_KEPT, True),
    ("n01665541", "leatherback turtle, leatherback, leathery turtle, Dermochelys coriacea", GLOSS_NOT_KEPT, True),
    ("n01667114", "mud turtle", GLOSS_NOT_KEPT, True),
    ("n01667778", "terrapin", GLOSS_NOT_KEPT, True),
    ("n01669191", "box turtle, box tortoise", GLOSS_NOT_KEPT, True),
    ("n01675722", "banded gecko", GLOSS_NOT_KEPT, True),
    ("n01677366", "common iguana, iguana, Iguana iguana", GLOSS_NOT_KEPT, True),
    ("n01682714", "American chameleon, anole, Anolis carolinensis", GLOSS_NOT_KEPT, True),
    ("n01685808", "whiptail, whiptail lizard", GLOSS_NOT_KEPT, True),
    ("n01687978", "agama", GLOSS_NOT_KEPT, True),
    ("n01688243", "frilled lizard, Chlamydosaurus kingi", GLOSS_NOT_KEPT, True),
    ("n01689811", "alligator lizard", GLOSS_NOT_KEPT, True),
    ("n01692333", "Gila monster, Heloderma suspectum", GLOSS_NOT_KEPT, True),
    ("n01693334", "green lizard, Lacerta viridis", GLOSS_NOT_KEPT, True),
    ("n01694178", "African chameleon, Chamaeleo chamaeleon", GLOSS_NOT_KEPT, True),
    (
        "n01695060",
        "Komodo dragon, Komodo lizard, dragon lizard, giant lizard, Varanus komodoensis",
        GLOSS_NOT_KEPT,
        True,
    ),
    ("n01697457", "African crocodile, Nile crocodile, Crocodylus niloticus", GLOSS_NOT_KEPT, True),
    ("n01698640", "American alligator, Alligator mississipiensis", GLOSS_NOT_KEPT, True),
    ("n01704323", "triceratops", GLOSS_NOT_KEPT, True),
    ("n01728572", "thunder snake, worm snake, Carphophis amoenus", GLOSS_NOT_KEPT, True),
    ("n01728920", "ringneck snake, ring-necked snake, ring snake", GLOSS_NOT_KEPT, True),
    ("n01729322", "hognose snake, puff adder, sand viper", GLOSS_NOT_KEPT, True),
    ("n01729977", "green snake, grass snake", GLOSS_NOT_KEPT, True),
    ("n01734418", "king snake, kingsnake", GLOSS_NOT_KEPT, True),
    ("n01735189", "garter snake, grass snake", GLOSS_NOT_KEPT, True),
    ("n01737021", "water snake", GLOSS_NOT_KEPT, True),
    ("n01739381", "vine snake", GLOSS_NOT_KEPT, True),
    ("n01740131", "night snake, Hypsiglena torquata", GLOSS_NOT_KEPT, True),
    ("n01742172", "boa constrictor, Constrictor constrictor", GLOSS_NOT_KEPT, True),
    ("n01744401", "rock python, rock snake, Python sebae", GLOSS_NOT_KEPT, True),
    ("n01748264", "Indian cobra, Naja naja", GLOSS_NOT_KEPT, True),
    ("n01749939", "green mamba", GLOSS_NOT_KEPT, True),
    ("n01751748", "sea snake", GLOSS_NOT_KEPT, True),
    ("n01753488", "horned viper, cerastes, sand viper, horned asp, Cerastes cornutus", GLOSS_NOT_KEPT, True),
    ("n01755581", "diamondback, diamondback rattlesnake, Crotalus adamanteus", GLOSS_NOT_KEPT, True),
    ("n01756291", "sidewinder, horned rattlesnake, Crotalus cerastes", GLOSS_NOT_KEPT, True),
    ("n01768244", "trilobite", GLOSS_NOT_KEPT, True),
    ("n01770081", "harvestman, daddy longlegs, Phalangium opilio", GLOSS_NOT_KEPT, True),
    ("n01770393", "scorpion", GLOSS_NOT_KEPT, True),
    ("n01773157", "black and gold garden spider, Argiope aurantia", GLOSS_NOT_KEPT, True),
    ("n01773549", "barn spider, Araneus cavaticus", GLOSS_NOT_KEPT, True),
    ("n01773797", "garden spider, Aranea diademata", GLOSS_NOT_KEPT, True),
    ("n01774384", "black widow, Latrodectus mactans", GLOSS_NOT_KEPT, True),
    ("n01774750", "tarantula", GLOSS_NOT_KEPT, True),
    ("n01775062", "wolf spider, hunting spider", GLOSS_NOT_KEPT, True),
    ("n01776313", "tick", GLOSS_NOT_KEPT, True),
    ("n01784675", "centipede", GLOSS_NOT_KEPT, True),
    ("n01795545", "black grouse", GLOSS_NOT_KEPT, True),
    ("n01796340", "ptarmigan", GLOSS_NOT_KEPT, True),
    ("n01797886", "ruffed grouse, partridge, Bonasa umbellus", GLOSS_NOT_KEPT, True),
    ("n01798484", "prairie chicken, prairie grouse, prairie fowl", GLOSS_NOT_KEPT, True),
    ("n01806143", "peacock", GLOSS_NOT_KEPT, True),
    ("n01806567", "quail", GLOSS_NOT_KEPT, True),
    ("n01807496", "partridge", GLOSS_NOT_KEPT, True),
    ("n01817953", "African grey, African gray, Psittacus erithacus", GLOSS_NOT_KEPT, True),
    ("n01818515", "macaw", GLOSS_NOT_KEPT, True),
    ("n01819313", "sulphur-crested cockatoo, Kakatoe galerita, Cacatua galerita", GLOSS_NOT_KEPT, True),
    ("n01820546", "lorikeet", GLOSS_NOT_KEPT, True),
]
CLASS_TABLE = Path(__file__).resolve().parent / "data" / "ilsvrc2012_classes.tsv"
FIRST_NON_ANIMAL = "n02666196"  # abacus: every ILSVRC-2012 wnid sorted before it is an animal
PLANT_PREFIXES = ("n11", "n12", "n13")  # plants and fungi


def ilsvrc2012_classes(path: Path = CLASS_TABLE) -> list[tuple[int, str, str, str]]:
    """(ILSVRC2012_ID, wnid, words, gloss) of the 1000 classes, in ILSVRC2012_ID order."""
    rows = [
        line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")
    ]
    header, body = rows[0], rows[1:]
    if header != ["ilsvrc2012_id", "wnid", "words", "gloss"] or len(body) != 1000:
        raise ValueError(f"{path}: expected the header ilsvrc2012_id wnid words gloss and 1000 rows")
    return [(int(i), wnid, words, gloss) for i, wnid, words, gloss in body]


def _living(wnid: str) -> bool:
    return wnid < FIRST_NON_ANIMAL or wnid.startswith(PLANT_PREFIXES)


ILSVRC2012 = ilsvrc2012_classes()
_FIRST = {wnid for wnid, *_ in DEMO_CLASSES}
# Every class the demo can draw: its first 100, then the other ILSVRC-2012 classes in sorted-wnid order.
CLASSES = DEMO_CLASSES + [
    (wnid, words, gloss, _living(wnid))
    for _, wnid, words, gloss in sorted(ILSVRC2012, key=lambda r: r[1])
    if wnid not in _FIRST
]
# Non-leaf ancestors (not classes), listed after the leaves as in the real meta.mat.
ROOT = ("n00001740", "entity", "that which is perceived or known or inferred to have its own distinct existence")
GROUPS = {
    True: ("n00004258", "living thing, animate thing", "a living (or once living) entity"),
    False: ("n00021939", "artifact, artefact", "a man-made object taken as a whole"),
}
SHAPES = ("disc", "triangle", "square", "ring", "cross", "star", "bar", "diamond")
# Looks of more than 100 classes: a code of hue bin x shape x texture (10 x 8 x 13 = 1040 codes). A
# texture is plain or stripes at one of 6 angles and 2 periods. The angles lie in [0, pi/2], so a
# horizontal flip (a -> pi - a), the training's augmentation, never turns one into another.
HUE_BINS = 10
STRIPE_ANGLES = tuple(math.pi / 2 * j / 5 for j in range(6))
STRIPE_PERIODS = (0.035, 0.08)  # of the short side: about 9 and 20 px once resized to 256
TEXTURES = (None,) + tuple((a, p) for a in STRIPE_ANGLES for p in STRIPE_PERIODS)


class DemoError(PipelineError, ValueError):
    """Demo settings that cannot make a dataset."""


# ---------------------------------------------------------------- drawing


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 4)[:3]]
    elif shape == "square":
        pts = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    elif shape == "diamond":
        pts = [(1.0, 0), (0, 0.45), (-1.0, 0), (0, -0.45)]
    elif shape == "bar":
        pts = [(1.0, 0.22), (-1.0, 0.22), (-1.0, -0.22), (1.0, -0.22)]
    elif shape == "cross":
        a, b = 1.0, 0.3
        pts = [
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
        ]
    elif shape == "star":
        pts = [
            (
                (1.0 if i % 2 == 0 else 0.42) * math.cos(i * math.pi / 5),
                (1.0 if i % 2 == 0 else 0.42) * math.sin(i * math.pi / 5),
            )
            for i in range(10)
        ]
    else:
        raise ValueError(shape)
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "disc":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=max(2, int(r * 0.3)))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)


def class_look(k: int, n_classes: int) -> dict:
    """The class's hue, shape and texture; fixed per class, not per image."""
    if n_classes > len(DEMO_CLASSES):
        return coded_look(k)
    return {
        "hue": k / n_classes,
        "shape": SHAPES[k % len(SHAPES)],
        "stripes": (k // len(SHAPES)) % 2 == 1 or k % 3 == 2,
        "stripe_angle": math.pi * ((k * 0.381966) % 1.0),
    }


def coded_look(k: int) -> dict:
    """Class k's look as a code of hue bin, shape and texture; distinct for k < 1040.

    With 1000 hues 0.001 apart nothing is learnable; each factor of the code
    is, and each one learned takes the loss below ln(1000)."""
    hue_bin, rest = k % HUE_BINS, k // HUE_BINS
    shape, texture = SHAPES[rest % len(SHAPES)], TEXTURES[rest // len(SHAPES)]
    look = {
        "hue": (hue_bin + 0.5) / HUE_BINS,
        "hue_jitter": 0.2 / HUE_BINS,  # well inside the bin
        "shape": shape,
        "stripes": texture is not None,
    }
    if texture is not None:
        look["stripe_angle"], look["stripe_period"] = texture
    return look


def noise_pool(seed: int) -> np.ndarray:
    """Gaussian pixel noise (sigma 12) that images crop at random offsets; cheaper than fresh noise."""
    rng = np.random.default_rng([seed, 3])
    return np.clip(rng.normal(0.0, 12.0, size=(2 * CANVAS, 2 * CANVAS, 3)), -64, 64).astype(np.int16)


def draw_image(
    rng: np.random.Generator, look: dict, n_classes: int, size: tuple[int, int], noise: np.ndarray
) -> Image.Image:
    """One image of the class `look` at `size` (width, height)."""
    scale = min(1.0, CANVAS / max(size))
    w, h = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    # Background: a dull random colour and a few dull blobs.
    bg = Image.new("RGB", (w, h), _rgb(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.8)))
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.35) * min(w, h)
        draw.ellipse(
            [cx - r, cy - r, cx + r, cy + r], fill=_rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.9))
        )
    # Object: the class's shape in the class's hue, at a random place, size, angle.
    jitter = look.get("hue_jitter", 0.25 / n_classes)
    colour = _rgb(look["hue"] + rng.uniform(-jitter, jitter), rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    for i in range(1 + int(rng.random() < 0.3)):
        r = rng.uniform(0.18, 0.35) * min(w, h) * (0.6 if i else 1.0)
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        _draw_shape(mdraw, look["shape"], cx, cy, r, rng.uniform(0, 2 * math.pi))
    fg = Image.new("RGB", (w, h), colour)
    if look["stripes"]:
        fg.paste(tuple(int(c * 0.45) for c in colour), mask=_stripe_mask(*_stripes(rng, look, min(w, h)), w, h))
    img = np.asarray(Image.composite(fg, bg, mask), np.int16)
    oy, ox = int(rng.integers(0, noise.shape[0] - h + 1)), int(rng.integers(0, noise.shape[1] - w + 1))
    img = img + noise[oy : oy + h, ox : ox + w]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if out.size != tuple(size):
        out = out.resize(size, Image.BILINEAR)
    return out


def _stripes(rng: np.random.Generator, look: dict, side: int) -> tuple[float, float]:
    """Stripe period (px) and angle of one image; a coded look fixes both up to a little jitter."""
    if "stripe_period" in look:
        # jitter well under half the gap between the code's angles (pi/10) and periods
        return look["stripe_period"] * rng.uniform(0.9, 1.1) * side, look["stripe_angle"] + rng.uniform(-0.08, 0.08)
    return rng.uniform(0.04, 0.07) * side, look["stripe_angle"] + rng.uniform(-0.2, 0.2)


def _stripe_mask(period: float, angle: float, w: int, h: int) -> Image.Image:
    """Mode-1 mask of the dark stripes."""
    yy, xx = np.ogrid[:h, :w]
    phase = xx * math.cos(angle) + yy * math.sin(angle)
    phase /= period
    # phase - floor(phase) equals numpy's phase % 1.0 bit for bit (both round the same exact value once)
    # at a sixth of the cost; a mode-1 mask and paste beat indexing a colour table likewise
    frac = np.floor(phase)
    np.subtract(phase, frac, out=frac)
    return Image.fromarray(frac < 0.5)


def texture_tile(seed: int) -> np.ndarray:
    """The photographs' fine texture (sizes: imagenet): a seamless TEXTURE_TILE square of int16 offsets,
    per-pixel grain in all channels alike, a mottle of bilinear octaves (TEXTURE_OCTAVES), and a little
    grain per channel."""
    rng = np.random.default_rng([seed, 4])
    n = TEXTURE_TILE
    luma = rng.standard_normal((n, n), dtype=np.float32) * TEXTURE_LUMA
    for px, amplitude in TEXTURE_OCTAVES:
        grid = rng.standard_normal((n // px + 1, n // px + 1), dtype=np.float32) * amplitude
        grid[-1], grid[:, -1] = grid[0], grid[:, 0]  # wrap around, so that repeated tiles meet without a seam
        octave = Image.fromarray(grid, "F").resize((n, n), Image.BILINEAR, box=(0, 0, n // px, n // px))
        luma += np.asarray(octave)
    chroma = rng.standard_normal((n, n, 3), dtype=np.float32) * TEXTURE_CHROMA
    return np.clip(np.rint(chroma + luma[..., None]), -96, 96).astype(np.int16)


def _add_tiled(img: np.ndarray, tile: np.ndarray, oy: int, ox: int) -> None:
    """img += the tile repeated over it, starting at (oy, ox) of the tile."""
    n = tile.shape[0]
    h, w = img.shape[:2]
    y = 0
    while y < h:
        ty = (oy + y) % n
        dy = min(h - y, n - ty)
        x = 0
        while x < w:
            tx = (ox + x) % n
            dx = min(w - x, n - tx)
            img[y : y + dy, x : x + dx] += tile[ty : ty + dy, tx : tx + dx]
            x += dx
        y += dy


def _draw_stripes(
    draw: ImageDraw.ImageDraw, period: float, angle: float, origin: tuple[int, int], size: tuple[int, int]
) -> None:
    """The dark stripes of _stripe_mask as polygons, the bands where the phase's fraction is under 1/2,
    on a canvas of `size` whose corner is `origin` of the image (the phase is the image's). Drawn, not
    computed per pixel, so a 12-megapixel image costs little more than a small one."""
    c, s = math.cos(angle), math.sin(angle)
    (x0, y0), (w, h) = origin, size
    along = [x * c + y * s for x, y in ((x0, y0), (x0 + w, y0), (x0, y0 + h), (x0 + w, y0 + h))]
    reach = w + h  # half-length of a band, past the canvas's corners
    cx, cy = x0 + w / 2, y0 + h / 2  # bands are drawn from the point nearest the canvas's centre
    for k in range(math.floor(min(along) / period) - 1, math.ceil(max(along) / period) + 1):
        corners = []
        for d, sign in (((k * period), 1), ((k + 0.5) * period, -1)):
            t = -cx * s + cy * c  # the centre's position along a band
            px, py = d * c - t * s - x0, d * s + t * c - y0
            corners += [(px - sign * reach * s, py + sign * reach * c), (px + sign * reach * s, py - sign * reach * c)]
        draw.polygon(corners, fill=255)


def _dull_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> list[tuple[int, int, int]]:
    """_rgb over arrays (colorsys's formula), for many colours at once."""
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    i = i.astype(int) % 6
    rgb = [np.choose(i, sector) for sector in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))]
    return [tuple(c) for c in np.rint(255 * np.stack(rgb, 1)).astype(int).tolist()]


def draw_photo(
    rng: np.random.Generator, look: dict, n_classes: int, size: tuple[int, int], texture: np.ndarray
) -> Image.Image:
    """One image of the class `look` at `size` (width, height), drawn at that size with a photograph's
    detail (sizes: imagenet): draw_image's background, blobs and class object, plus CLUTTER strokes
    under the object and the texture over everything. The class code (hue, shape, stripes) is drawn
    as in draw_image, at the same relative sizes."""
    w, h = size
    side = min(w, h)
    bg = Image.new("RGB", (w, h), _rgb(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.8)))
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.35) * side
        draw.ellipse(
            [cx - r, cy - r, cx + r, cy + r], fill=_rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.9))
        )
    # Clutter: short dull strokes (grass, twigs, edges), sized with the image, so a large image has fewer
    # edges per pixel, as a camera original has next to a downscaled photo.
    x, y, length, angle, width, hue, sat, val = rng.random((8, CLUTTER))
    x, y, length, angle = x * w, y * h, (0.02 + 0.13 * length) * side, angle * math.pi
    dx, dy = length * np.cos(angle), length * np.sin(angle)
    ends = np.stack([x - dx, y - dy, x + dx, y + dy], 1).tolist()
    widths = np.maximum(1, np.rint((0.003 + 0.012 * width) * side)).astype(int).tolist()
    for end, fill, px in zip(ends, _dull_rgb(hue, 0.3 * sat, 0.15 + 0.8 * val), widths):
        draw.line(end, fill=fill, width=px)
    # Object: as draw_image's.
    jitter = look.get("hue_jitter", 0.25 / n_classes)
    colour = _rgb(look["hue"] + rng.uniform(-jitter, jitter), rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    for i in range(1 + int(rng.random() < 0.3)):
        r = rng.uniform(0.18, 0.35) * side * (0.6 if i else 1.0)
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        _draw_shape(mdraw, look["shape"], cx, cy, r, rng.uniform(0, 2 * math.pi))
    bg.paste(colour, mask=mask)
    if look["stripes"]:  # the dark stripes, drawn over the object's box only
        period, angle = _stripes(rng, look, side)
        box = mask.getbbox()
        if box is not None:
            stripes = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
            _draw_stripes(ImageDraw.Draw(stripes), period, angle, box[:2], stripes.size)
            bg.paste(tuple(int(c * 0.45) for c in colour), box, mask=ImageChops.multiply(stripes, mask.crop(box)))
    img = np.array(bg, np.int16)
    n = texture.shape[0]
    _add_tiled(img, texture, int(rng.integers(0, n)), int(rng.integers(0, n)))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def image_size(rng: np.random.Generator, large: bool, sizes: str = "demo") -> tuple[int, int]:
    """(width, height) of one image; `large`: over 1000 px on the long side."""
    if sizes == "imagenet":
        return _imagenet_size(rng, large)
    long_side = int(rng.integers(*LARGE_SIDE)) if large else int(rng.integers(*SMALL_SIDE))
    short_side = int(round(long_side / rng.choice([1.0, 4 / 3, 3 / 2, 1.25])))
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


def _imagenet_size(rng: np.random.Generator, large: bool) -> tuple[int, int]:
    if large:
        side = MULTI_MP_SIDE if rng.random() < MULTI_MP_SHARE else IMAGENET_LARGE_SIDE
        long_side = int(rng.integers(*side))
    else:
        long_side = MEDIUM_SIDE if rng.random() < MEDIUM_SHARE else int(rng.integers(*SMALLER_SIDE))
    short_side = int(round(long_side / ASPECTS[rng.choice(len(ASPECTS), p=ASPECT_WEIGHTS)]))
    return (short_side, long_side) if rng.random() < PORTRAIT_SHARE else (long_side, short_side)


def encode(img: Image.Image, quirk: str | None) -> bytes:
    """JPEG bytes; or a quirk of the real set: 'cmyk', 'gray' JPEG, or 'png' data."""
    buf = io.BytesIO()
    if quirk == "png":
        img.save(buf, format="PNG")
    elif quirk == "cmyk":
        img.convert("CMYK").save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif quirk == "gray":
        img.convert("L").save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# ---------------------------------------------------------------- archives


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, MTIME, 0, 0, "", ""
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            _add(tar, name, data)
    return buf.getvalue()


def _uint(values) -> np.ndarray:
    """A row of integers in the smallest unsigned type, as MATLAB stored the real meta.mat."""
    arr = np.array([values], dtype=np.int64).reshape(1, -1)
    return arr.astype(np.uint8 if arr.size == 0 or arr.max() < 256 else np.uint16)


def meta_mat(leaves: list[dict], groups: list[dict]) -> bytes:
    """meta.mat bytes: the struct array `synsets` (N x 1), fields and types as in the devkit."""
    rows = leaves + groups
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in SYNSET_FIELDS])
    for i, s in enumerate(rows):
        synsets[i, 0] = (
            _uint(s["id"]),
            s["wnid"],
            s["words"],
            s["gloss"],
            _uint(len(s["children"])),
            _uint(s["children"]),
            _uint(s["height"]),
            _uint(s["images"]),
        )
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": synsets}, format="5", oned_as="row")
    data = bytearray(buf.getvalue())
    # The 116-byte header text carries the creation time; fix it for identical bytes.
    data[:116] = b"MATLAB 5.0 MAT-file, written by pipeline.demo".ljust(116)
    return bytes(data)


def synsets(wnids_by_id: list[int], n_train: int) -> tuple[list[dict], list[dict]]:
    """Leaf rows in ILSVRC2012_ID order (1..N), then non-leaf ancestors."""
    n = len(wnids_by_id)
    leaves = []
    for ilsvrc_id, k in enumerate(wnids_by_id, 1):
        wnid, words, gloss, _ = CLASSES[k]
        leaves.append(
            {
                "id": ilsvrc_id,
                "wnid": wnid,
                "words": words,
                "gloss": gloss,
                "children": [],
                "height": 0,
                "images": n_train,
                "class": k,
            }
        )
    groups, next_id = [], n + 1
    for living in (True, False):
        kids = [s for s in leaves if CLASSES[s["class"]][3] == living]
        if kids:
            wnid, words, gloss = GROUPS[living]
            groups.append(
                {
                    "id": next_id,
                    "wnid": wnid,
                    "words": words,
                    "gloss": gloss,
                    "height": 1,
                    "children": [s["id"] for s in kids],
                    "images": n_train * len(kids),
                }
            )
            next_id += 1
    groups.append(
        {
            "id": next_id,
            "wnid": ROOT[0],
            "words": ROOT[1],
            "gloss": ROOT[2],
            "height": 2,
            "children": [g["id"] for g in groups],
            "images": n_train * n,
        }
    )
    return leaves, groups


def _id_order(rng: np.random.Generator, n: int) -> list[int]:
    """Class numbers in ILSVRC2012_ID order: the devkit's own for all 1000 classes, else a
    seeded permutation that is not sorted-wnid order."""
    if n == len(CLASSES):
        number = {wnid: k for k, (wnid, *_) in enumerate(CLASSES)}
        return [number[wnid] for _, wnid, _, _ in ILSVRC2012]
    by_wnid = sorted(range(n), key=lambda k: CLASSES[k][0])
    order = [by_wnid[i] for i in rng.permutation(n)]
    if order == by_wnid:
        order = order[1:] + order[:1]
    return order


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pick(rng: np.random.Generator, total: int, count: int, exclude=()) -> list[int]:
    pool = np.setdiff1d(np.arange(total), np.asarray(list(exclude), dtype=int))
    return [int(i) for i in rng.choice(pool, size=min(count, len(pool)), replace=False)]


def quirk_list(sizes: str, split: int, n_images: int) -> tuple[str, ...]:
    """The quirks one split carries (split 0 train, 1 val), one entry per image."""
    if sizes == "demo":
        return DEMO_QUIRKS[split]
    return tuple(q for q, rate in QUIRK_RATES.items() for _ in range(max(1, round(rate * n_images))))


def check_settings(
    classes: int, train_per_class: int, val_per_class: int, large_fraction: float, sizes: str = "demo", workers: int = 1
) -> None:
    if not 2 <= classes <= len(CLASSES):
        raise DemoError(f"demo.classes = {classes}: the demo has 2 to {len(CLASSES)} classes")
    if train_per_class < 2 or val_per_class < 1:
        raise DemoError(
            f"demo.train_per_class = {train_per_class}, demo.val_per_class = {val_per_class}: "
            "need at least 2 training images per class (three carry the quirks) and 1 val image"
        )
    if not 0.0 <= large_fraction <= 1.0:
        raise DemoError(f"demo.large_fraction = {large_fraction}: must lie in [0, 1]")
    if sizes not in SIZES:
        raise DemoError(f"demo.sizes = {sizes!r}: must be one of {', '.join(SIZES)}")
    if workers < 1:
        raise DemoError(f"--workers {workers}: need at least 1")


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Split:
    """Which images of one split are large and which carry a quirk (image number -> quirk)."""

    large: frozenset
    quirks: dict

    def quirk_counts(self) -> dict[str, int]:
        placed = list(self.quirks.values())
        return {q: placed.count(q) for q in QUIRK_RATES}


def plan_split(seed: int, split: int, total: int, large_fraction: float, quirks: tuple[str, ...]) -> Split:
    rng = np.random.default_rng([seed, split, 0])
    large = set(_pick(rng, total, max(1, round(large_fraction * total)) if large_fraction > 0 else 0))
    return Split(frozenset(large), dict(zip(_pick(rng, total, len(quirks), exclude=large), quirks)))


@dataclass(frozen=True)
class Job:
    """All an image needs besides its (split, number, class): sent once to each worker."""

    seed: int
    classes: int
    sizes: str
    looks: tuple
    splits: tuple  # Split of train, of val


class Renderer:
    """(split, image number, class) -> (file bytes, (width, height)); each image has its own
    random stream, so the bytes depend neither on the order nor on the process that draws it."""

    def __init__(self, job: Job):
        self.job = job
        self.photo = job.sizes == "imagenet"
        self.noise = texture_tile(job.seed) if self.photo else noise_pool(job.seed)

    def __call__(self, task: tuple[int, int, int]) -> tuple[bytes, tuple[int, int]]:
        split, g, k = task
        plan = self.job.splits[split]
        rng = np.random.default_rng([self.job.seed, split, 1, g])
        size = image_size(rng, g in plan.large, self.job.sizes)
        draw = draw_photo if self.photo else draw_image
        img = draw(rng, self.job.looks[k], self.job.classes, size, self.noise)
        return encode(img, plan.quirks.get(g)), size


_WORKER: Renderer | None = None


def _start_worker(job: Job) -> None:
    global _WORKER
    _WORKER = Renderer(job)


def _render_in_worker(task: tuple[int, int, int]) -> tuple[bytes, tuple[int, int]]:
    return _WORKER(task)


@contextlib.contextmanager
def rendering(job: Job, workers: int):
    """A function of an iterable of tasks that yields their images in task order."""
    if workers == 1:
        yield lambda tasks: map(Renderer(job), tasks)
        return
    with multiprocessing.Pool(workers, _start_worker, (job,)) as pool:
        yield lambda tasks: pool.imap(_render_in_worker, tasks, chunksize=8)


def size_stats(sizes: list[tuple[int, int]]) -> dict:
    """Mean width and height, share over 1000 px on the long side, and the count of camera
    originals (long side MULTI_MP_SIDE, each MULTI_MP_PIXELS or more)."""
    arr = np.array(sizes, dtype=np.int64).reshape(-1, 2)
    return {
        "mean_width": round(float(arr[:, 0].mean()), 1),
        "mean_height": round(float(arr[:, 1].mean()), 1),
        "share_over_1000px": round(float((arr.max(1) > 1000).mean()), 4),
        "multi_megapixel": int((arr.max(1) >= MULTI_MP_SIDE[0]).sum()),
    }


# ---------------------------------------------------------------- the dataset


def _write_train(path: Path, images, by_wnid: list[int], numbers: list[np.ndarray], sizes: list) -> None:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for k, class_numbers in zip(by_wnid, numbers):
            wnid, inner = CLASSES[k][0], []
            for n in class_numbers:
                data, size = next(images)
                inner.append((f"{wnid}_{n}.JPEG", data))
                sizes.append(size)
            _add(tar, f"{wnid}.tar", _tar_bytes(inner))


def _write_val(path: Path, images, n_val: int, sizes: list) -> None:
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for g in range(n_val):
            data, size = next(images)
            _add(tar, val_file_name(g + 1), data)
            sizes.append(size)


def _write_devkit(path: Path, leaves: list[dict], groups: list[dict], ground_truth: bytes) -> None:
    with atomic_path(path) as tmp:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for d in (f"{DEVKIT_DIR}/", f"{DEVKIT_DIR}/data/"):
                tar.addfile(_info(d, directory=True))
            _add(tar, f"{DEVKIT_DIR}/{META}", meta_mat(leaves, groups))
            _add(tar, f"{DEVKIT_DIR}/{GROUND_TRUTH}", ground_truth)


def val_order(seed: int, classes: int, val_per_class: int) -> list[int]:
    """The class of each val image, in file-number order: classes interleaved by a seeded shuffle."""
    return [
        int(k) for k in np.random.default_rng([seed, 1, 2]).permutation(np.repeat(np.arange(classes), val_per_class))
    ]


def make_demo(
    out_dir: str | Path,
    seed: int = DEMO["seed"],
    classes: int = DEMO["classes"],
    train_per_class: int = DEMO["train_per_class"],
    val_per_class: int = DEMO["val_per_class"],
    large_fraction: float = DEMO["large_fraction"],
    sizes: str = DEMO["sizes"],
    workers: int = 1,
) -> dict:
    """Write the three archives, MD5SUMS and demo.json into `out_dir`; return the metrics.

    `workers` processes draw the images; the bytes do not depend on it."""
    check_settings(classes, train_per_class, val_per_class, large_fraction, sizes, workers)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_val = classes * train_per_class, classes * val_per_class
    job = Job(
        seed,
        classes,
        sizes,
        tuple(class_look(k, classes) for k in range(classes)),
        (
            plan_split(seed, 0, n_train, large_fraction, quirk_list(sizes, 0, n_train)),
            plan_split(seed, 1, n_val, large_fraction, quirk_list(sizes, 1, n_val)),
        ),
    )
    val_classes = val_order(seed, classes, val_per_class)
    drawn = _write_image_archives(out, job, train_per_class, val_classes, workers)
    groups = _write_devkit_for(out, seed, classes, train_per_class, val_classes)
    md5s = _write_md5sums(out)
    metrics = {
        "seed": seed,
        "classes": classes,
        "sizes": sizes,
        "train_images": n_train,
        "val_images": n_val,
        "large_images": len(job.splits[0].large) + len(job.splits[1].large),
        **size_stats(drawn),
        "quirks": {"train": job.splits[0].quirk_counts(), "val": job.splits[1].quirk_counts()},
        "non_leaf_synsets": len(groups),
        "train_bytes": (out / TRAIN_TAR).stat().st_size,
        "val_bytes": (out / VAL_TAR).stat().st_size,
        "devkit_bytes": (out / DEVKIT_TAR).stat().st_size,
        "workers": workers,
        "seconds": round(time.perf_counter() - t0, 3),
        "md5": md5s,
    }
    write_json(out / "demo.json", metrics)
    return metrics


def _write_image_archives(
    out: Path, job: Job, train_per_class: int, val_classes: list[int], workers: int
) -> list[tuple[int, int]]:
    """Draw every image and write the train and val tars; return the drawn sizes in written order."""
    classes, seed = job.classes, job.seed
    # Train: class k's images are g = k * train_per_class + i, written in sorted-wnid order.
    by_wnid = sorted(range(classes), key=lambda k: CLASSES[k][0])
    names_rng = np.random.default_rng([seed, 0, 2])
    numbers = [
        np.sort(names_rng.choice(np.arange(1, max(20000, 2 * train_per_class)), train_per_class, replace=False))
        for _ in by_wnid
    ]
    tasks = [(0, k * train_per_class + i, k) for k in by_wnid for i in range(train_per_class)] + [
        (1, g, k) for g, k in enumerate(val_classes)
    ]
    drawn: list[tuple[int, int]] = []
    with rendering(job, workers) as render:
        images = iter(render(tasks))
        _write_train(out / TRAIN_TAR, images, by_wnid, numbers, drawn)
        _write_val(out / VAL_TAR, images, len(val_classes), drawn)
    return drawn


def _write_devkit_for(out: Path, seed: int, classes: int, train_per_class: int, val_classes: list[int]) -> list[dict]:
    """The devkit: meta.mat's synsets in a drawn ILSVRC2012_ID order, and the val ground truth by ID."""
    leaves, groups = synsets(_id_order(np.random.default_rng([seed, 2]), classes), train_per_class)
    id_of_class = {s["class"]: s["id"] for s in leaves}
    _write_devkit(out / DEVKIT_TAR, leaves, groups, "".join(f"{id_of_class[k]}\n" for k in val_classes).encode())
    return groups


def _write_md5sums(out: Path) -> dict[str, str]:
    md5s = {name: _md5(out / name) for name in (TRAIN_TAR, VAL_TAR, DEVKIT_TAR)}
    with atomic_path(out / "MD5SUMS") as tmp:
        tmp.write_text("".join(f"{md5}  {name}\n" for name, md5 in md5s.items()))
    return md5s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", required=True, help="folder for the archives (config demo.out_dir)")
    p.add_argument("--seed", type=int, default=DEMO["seed"])
    p.add_argument("--classes", type=int, default=DEMO["classes"])
    p.add_argument("--train-per-class", type=int, default=DEMO["train_per_class"])
    p.add_argument("--val-per-class", type=int, default=DEMO["val_per_class"])
    p.add_argument(
        "--large-fraction",
        type=float,
        default=DEMO["large_fraction"],
        help="share of images over 1000 px on the long side",
    )
    p.add_argument(
        "--sizes",
        default=DEMO["sizes"],
        help="demo: the demo's sizes and quirks | imagenet: ImageNet's size mix, quirks at their rarity",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that draw the images (a runtime knob: the bytes do not depend on it)",
    )
    a = p.parse_args(argv)
    return run_cli(_make_and_report, a)


def _make_and_report(a: argparse.Namespace) -> None:
    m = make_demo(
        a.out_dir, a.seed, a.classes, a.train_per_class, a.val_per_class, a.large_fraction, a.sizes, a.workers
    )
    print(
        f"demo: {m['classes']} classes, {m['train_images']} train + {m['val_images']} val images "
        f"({m['large_images']} large, mean {m['mean_width']:.0f} x {m['mean_height']:.0f} px) in {a.out_dir}, "
        f"{m['seconds']:.1f} s on {m['workers']} worker(s)"
    )


if __name__ == "__main__":
    sys.exit(main())
