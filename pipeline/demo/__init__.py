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
and gloss from pipeline/data/ilsvrc2012_classes.tsv (the demo's own words and
glosses of its first classes: pipeline/data/demo_classes.tsv). With all 1000 classes the
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

The modules, one job each: class_table (the classes, read from
pipeline/data/), looks (each class's look), draw and photo (an image at the
demo's or ImageNet's detail), image_sizes, quirks (the odd files and each
image's bytes), plan (which images are large or odd), render (drawing them in
one process or many), devkit_meta (meta.mat), archives (the tars and
MD5SUMS), make (the whole dataset) and cli (python -m pipeline.demo).
"""

from pipeline.demo.archives import DEVKIT_TAR, TRAIN_TAR, VAL_TAR
from pipeline.demo.class_table import CLASSES, DEMO_CLASSES, ILSVRC2012, ilsvrc2012_classes
from pipeline.demo.cli import main
from pipeline.demo.draw import draw_image
from pipeline.demo.image_sizes import MULTI_MP_PIXELS, SIZES, image_size, size_stats
from pipeline.demo.looks import HUE_BINS, SHAPES, class_look, coded_look
from pipeline.demo.make import DEMO, DemoError, check_settings, make_demo
from pipeline.demo.photo import draw_photo, texture_tile
from pipeline.demo.plan import val_order
from pipeline.demo.quirks import QUIRK_RATES, encode, quirk_list
from pipeline.demo.render import Job, Renderer

__all__ = [
    "CLASSES",
    "DEMO",
    "DEMO_CLASSES",
    "DEVKIT_TAR",
    "HUE_BINS",
    "ILSVRC2012",
    "MULTI_MP_PIXELS",
    "QUIRK_RATES",
    "SHAPES",
    "SIZES",
    "TRAIN_TAR",
    "VAL_TAR",
    "DemoError",
    "Job",
    "Renderer",
    "check_settings",
    "class_look",
    "coded_look",
    "draw_image",
    "draw_photo",
    "encode",
    "ilsvrc2012_classes",
    "image_size",
    "main",
    "make_demo",
    "quirk_list",
    "size_stats",
    "texture_tile",
    "val_order",
]
