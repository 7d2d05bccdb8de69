"""minillama: Llama 2 inference as small, readable array functions on NumPy and CuPy.

The package, by subpackage (docs/architecture.md has the map):

* ``functional``: the lesson, one pure array function per component.
* ``model``: the reference assembly (weights, forward pass, KV cache).
* ``fast``: speed arrangements, drop-in replacements chosen once at load.
* ``formats``: every checkpoint format, read safely; Hugging Face folders written.
* ``tokenizer``: the Llama tokenizers with Hugging Face's interface; the BPE lesson.
* ``generation``: sampling and the generation loop.
* ``modeling``: the Hugging Face-style classes (``LlamaForCausalLM``, ...).
"""

from .backend import get_namespace, namespace_of, to_numpy
from .config import LlamaConfig
from .demo import demo_model_path
from .errors import CheckpointError, ConfigError, CorpusError, TokenizerError
from .generation import GenerationOutput, generate, generate_text, stream_text
from .modeling import LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel, LlamaOutput, load
from .model import llama_forward
from .tokenizer import LlamaTokenizer, LlamaTokenizerFast

__version__ = "0.1.0"

__all__ = [
    "LlamaConfig", "demo_model_path", "ConfigError", "CheckpointError", "CorpusError", "LlamaModel", "LlamaForCausalLM",
    "LlamaForSequenceClassification", "LlamaOutput", "llama_forward", "load",
    "get_namespace", "namespace_of", "to_numpy", "LlamaTokenizer", "LlamaTokenizerFast", "TokenizerError", "generate", "generate_text", "stream_text", "GenerationOutput",
]
