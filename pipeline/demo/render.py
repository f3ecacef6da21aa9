"""Drawing the images, in one process or many: the bytes depend on neither."""

from __future__ import annotations

import contextlib
import multiprocessing
from dataclasses import dataclass

import numpy as np

from pipeline.demo.draw import draw_image, noise_pool
from pipeline.demo.image_sizes import image_size
from pipeline.demo.photo import draw_photo, texture_tile
from pipeline.demo.quirks import encode


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
