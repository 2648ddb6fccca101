"""Model access: token ids in, next-token log-probabilities and sampled continuations out."""

from .base import Continuation, ContinuationRequest, LanguageModel, TokenConstraint, Tokenizer
from .function import FunctionLM
from .loading import load_model

__all__ = ["Continuation", "ContinuationRequest", "FunctionLM", "LanguageModel", "TokenConstraint", "Tokenizer",
           "load_model"]
