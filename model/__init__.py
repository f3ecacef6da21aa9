"""The two-column AlexNet of Krizhevsky, Sutskever & Hinton (NIPS 2012)."""

from model.alexnet import AlexNet, count_parameters
from model.lrn import LocalResponseNorm

__all__ = ["AlexNet", "LocalResponseNorm", "count_parameters"]
