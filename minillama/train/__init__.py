"""Training in NumPy: whole-model gradients, the optimizer, gradient clipping and the learning-rate schedule.

* :func:`loss_and_grads`: a causal LM's loss (as transformers' ``labels=`` loss) and the gradient of
  every parameter by its Hugging Face name, by the backward of each component in ``functional``.

* :func:`add_lora`, :func:`save_lora`, :func:`load_lora`, :func:`merge_lora`: LoRA adapters (train only
  low-rank updates of the projections; ``loss_and_grads`` then returns the adapters' gradients only),
  saved and loaded in peft's folder layout; :func:`lora_parameters` lists the adapter arrays by name.

* :class:`AdamW`: Adam with decoupled weight decay, updating the parameter arrays in place.
* :func:`clip_grad_norm`: scale all gradients together down to a maximum global norm.
* :func:`lr_at`: linear warmup, then cosine decay to a floor.
* :func:`save_optimizer` / :func:`load_optimizer`: the optimizer's state in a ``.npz`` file.

* :func:`train`: the training loop, from a text file to a checkpoint folder (``loop``), with
  atomic checkpoints and exact resumption (``checkpoint``), over a named preset (``presets``)
  and a freshly initialised model (:func:`init_model`, ``init``).
"""

from .backprop import loss_and_grads
from .init import init_model, load_trainable, trainable_copy
from .lora import add_lora, load_lora, lora_parameters, merge_lora, save_lora
from .loop import TrainProgress, evaluate, train
from .optim import AdamW, clip_grad_norm, load_optimizer, lr_at, save_optimizer
from .presets import PRESETS, TrainPreset, get_preset, model_config

__all__ = ["loss_and_grads", "AdamW", "clip_grad_norm", "lr_at", "save_optimizer", "load_optimizer",
           "add_lora", "save_lora", "load_lora", "merge_lora", "lora_parameters",
           "train", "TrainProgress", "evaluate", "init_model", "load_trainable", "trainable_copy",
           "PRESETS", "TrainPreset", "get_preset", "model_config"]
