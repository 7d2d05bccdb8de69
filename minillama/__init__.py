"""minillama: Llama 2 inference as small, readable array functions on NumPy and CuPy."""

from .backend import get_namespace, namespace_of, to_numpy
from .checkpoint import CheckpointError
from .config import ConfigError, LlamaConfig
from .generate import GenerationOutput, generate, generate_text, stream_text
from .tokenizer import LlamaTokenizer, LlamaTokenizerFast, TokenizerError
from .model import (LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel, LlamaOutput, llama_forward, load)

__version__ = "0.1.0"

__all__ = [
    "LlamaConfig", "ConfigError", "CheckpointError", "LlamaModel", "LlamaForCausalLM",
    "LlamaForSequenceClassification", "LlamaOutput", "llama_forward", "load",
    "get_namespace", "namespace_of", "to_numpy", "LlamaTokenizer", "LlamaTokenizerFast", "TokenizerError", "generate", "generate_text", "stream_text", "GenerationOutput",
]
