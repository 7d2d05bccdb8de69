"""Generation: choosing each next token (``sampling``) and the loop around the model (``generate``)."""

from .generate import GenerationOutput, generate, generate_text, stream_text
from .sampling import Sampling

__all__ = ["GenerationOutput", "Sampling", "generate", "generate_text", "stream_text"]
