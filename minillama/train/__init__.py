"""Training in NumPy: the optimizer, gradient clipping and the learning-rate schedule.

* :class:`AdamW`: Adam with decoupled weight decay, updating the parameter arrays in place.
* :func:`clip_grad_norm`: scale all gradients together down to a maximum global norm.
* :func:`lr_at`: linear warmup, then cosine decay to a floor.
* :func:`save_optimizer` / :func:`load_optimizer`: the optimizer's state in a ``.npz`` file.
"""

from .optim import AdamW, clip_grad_norm, load_optimizer, lr_at, save_optimizer

__all__ = ["AdamW", "clip_grad_norm", "lr_at", "save_optimizer", "load_optimizer"]
