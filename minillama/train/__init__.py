"""Training in NumPy: whole-model gradients, the optimizer, gradient clipping and the learning-rate schedule.

* :func:`loss_and_grads`: a causal LM's loss (as transformers' ``labels=`` loss) and the gradient of
  every parameter by its Hugging Face name, by the backward of each component in ``functional``.

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
from .loop import TrainProgress, evaluate, train
from .optim import AdamW, clip_grad_norm, load_optimizer, lr_at, save_optimizer
from .presets import PRESETS, TrainPreset, get_preset, model_config

__all__ = ["loss_and_grads", "AdamW", "clip_grad_norm", "lr_at", "save_optimizer", "load_optimizer",
           "train", "TrainProgress", "evaluate", "init_model", "load_trainable", "trainable_copy",
           "PRESETS", "TrainPreset", "get_preset", "model_config"]
