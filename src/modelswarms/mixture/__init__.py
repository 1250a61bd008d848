"""Experts of any architecture composed at their output: a union vocabulary (vocab.py) and a
mixture of next-token distributions and sequence likelihoods (model.py)."""

from .model import MixtureLM, UnionTokenizer
from .pool import load_mixture, load_mixture_pool
from .vocab import UnionVocab, align, token_keys

__all__ = ["MixtureLM", "UnionTokenizer", "UnionVocab", "align", "load_mixture",
           "load_mixture_pool", "token_keys"]
