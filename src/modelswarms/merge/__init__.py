"""Classic merge methods (linear, task arithmetic, TIES, DARE, breadcrumbs, slerp, karcher,
model stock) as a registry, applied per tensor over flattened experts."""

from . import methods as _methods  # noqa: F401  (registers the methods)
from .methods import (
    BreadcrumbsParams,
    DareParams,
    KarcherParams,
    LinearParams,
    ModelStockParams,
    SlerpParams,
    TaskArithmeticParams,
    TiesParams,
)
from .registry import MERGE_METHODS, MergeMethod, merge_method, merge_tensors, merge_vectors

__all__ = [
    "MERGE_METHODS",
    "BreadcrumbsParams",
    "DareParams",
    "KarcherParams",
    "LinearParams",
    "MergeMethod",
    "ModelStockParams",
    "SlerpParams",
    "TaskArithmeticParams",
    "TiesParams",
    "merge_method",
    "merge_tensors",
    "merge_vectors",
]
