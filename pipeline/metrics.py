"""Top-k error and ten-crop averaging: the arithmetic of the evaluation stage.

Ten-crop (paper, section 4.1): the network scores the four corner 224x224
patches of the 256x256 image, the centre patch, and the horizontal
reflections of all five; the prediction is the mean of the ten softmax
outputs. The loader hands the views as (N, 10, 3, 224, 224) in the order
[TL, TR, BL, BR, C, then the same five flipped], so the centre crop is view 4
and comes out of the same forward pass (one decode serves both).

Top-k with ties (deterministic and conservative): an image counts as correct
at k when fewer than k *other* classes score greater than *or equal to* the
true class. A tie with the true class therefore counts against it, so a
constant output (all scores equal) is never correct, whatever k < classes is,
and torch.topk's arbitrary order among equal scores never matters. A
non-finite true score counts as wrong. This can only make the error larger
than what topk-order counting reports, never smaller.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

TEN_CROP_VIEWS = 10
CENTER_VIEW = 4  # [TL, TR, BL, BR, C, flipped...]: the unflipped centre patch
TOPK = (1, 5)  # the paper reports top-1 and top-5 error (section 4)


def true_class_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many other classes score >= the true class, per row (ties count against).

    scores (N, C) float, labels (N,) int64 -> (N,) int64 in [0, C-1]; rows whose
    true score is not finite get rank C (never correct).
    """
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (N, C) and labels (N,); got {tuple(scores.shape)} and {tuple(labels.shape)}")
    true = scores.gather(1, labels.view(-1, 1).to(scores.device))
    rank = (scores >= true).sum(dim=1) - 1  # the true class is >= itself
    return torch.where(torch.isfinite(true.squeeze(1)), rank, scores.shape[1])


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (N,): the true class is among the top k under the tie rule above."""
    return true_class_rank(scores, labels) < k


def topk_error(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Top-k error in percent over the rows of `scores`."""
    if len(labels) == 0:
        raise ValueError("top-k error of zero images is undefined")
    return 100.0 * (1.0 - topk_correct(scores, labels, k).double().mean().item())


def ten_crop_probs(model: torch.nn.Module, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax averaged over the ten views, and the centre view's softmax.

    views (N, 10, 3, H, W) -> two (N, C) float32 tensors. All N*10 views go
    through the network in one forward call; no per-image loop.
    """
    if views.ndim != 5:
        raise ValueError(f"ten-crop views must be (N, 10, 3, H, W); got {tuple(views.shape)}")
    n, v = views.shape[:2]
    logits = model(views.reshape(n * v, *views.shape[2:]))
    probs = torch.softmax(logits.float(), dim=1).view(n, v, logits.shape[-1])
    return probs.mean(dim=1), probs[:, CENTER_VIEW]


class EvalCounts:
    """Integer tallies of one evaluation; they add across batches and ranks.

    Keeps counts, not rates, so shards evaluated apart (ranks, or separate
    calls) sum to exactly the numbers of one pass over all images.
    """

    KEYS = ("top1_10crop", "top5_10crop", "top1_center", "top5_center")

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        z = lambda *shape: torch.zeros(shape, dtype=torch.int64, device=device)  # noqa: E731
        self.tensors = {
            "images": z(1),
            "correct": z(len(self.KEYS)),
            "class_images": z(num_classes),
            "class_top1_10crop": z(num_classes),
            "class_top1_center": z(num_classes),
            # rows: true class, columns: ten-crop top-1 prediction (argmax; lowest index on ties)
            "confusion": z(num_classes, num_classes),
        }

    def update(self, probs_10crop: torch.Tensor, probs_center: torch.Tensor, labels: torch.Tensor) -> None:
        t = self.tensors
        dev = t["images"].device
        labels = labels.to(dev, torch.int64).view(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0].item()
            raise ValueError(
                f"label {bad} outside the model's {self.num_classes} classes: "
                "the checkpoint and the validation shards disagree on the class list"
            )
        probs_10crop, probs_center = probs_10crop.to(dev), probs_center.to(dev)
        rank10 = true_class_rank(probs_10crop, labels)
        rankc = true_class_rank(probs_center, labels)
        top1_10, top1_c = rank10 < 1, rankc < 1
        t["images"] += labels.numel()
        t["correct"] += torch.stack([top1_10.sum(), (rank10 < 5).sum(), top1_c.sum(), (rankc < 5).sum()])
        ones = torch.ones_like(labels)
        t["class_images"].index_add_(0, labels, ones)
        t["class_top1_10crop"].index_add_(0, labels, top1_10.long())
        t["class_top1_center"].index_add_(0, labels, top1_c.long())
        pred = probs_10crop.argmax(dim=1)
        t["confusion"].view(-1).index_add_(0, labels * self.num_classes + pred, ones)

    def add(self, other: EvalCounts) -> EvalCounts:
        for name, tensor in self.tensors.items():
            tensor += other.tensors[name].to(tensor.device)
        return self

    def all_reduce(self) -> None:
        """Sum the tallies over all ranks of the default process group."""
        for tensor in self.tensors.values():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    @property
    def images(self) -> int:
        return int(self.tensors["images"].item())

    def errors(self) -> dict[str, float]:
        """Top-1/top-5 error in percent, ten-crop and centre, keyed like metrics.json."""
        n = self.images
        if n == 0:
            raise ValueError("no validation images were scored")
        correct = self.tensors["correct"].tolist()
        return {f"val_{key.replace('_', '_err_', 1)}": 100.0 * (1.0 - c / n) for key, c in zip(self.KEYS, correct)}
