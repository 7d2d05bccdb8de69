"""Speed arrangements: drop-in replacements for reference functions and weight layouts.

Each one computes what the reference in ``minillama.model`` computes (tests/test_fast.py holds
each equal to it), and a model picks its assembly once, when it is loaded:

* ``"reference"``: the lesson's own functions on the weights as loaded (any backend).
* ``"cpu"`` (the default on NumPy): fused q/k/v and gate/up, column-major tall matrices
  (``fused``), blocked attention for long prompts (``attention``).

``tune_malloc`` (``malloc``) is opt-in: it changes glibc's settings for the whole process, so only
the command line applies it. ``minillama.functional`` and ``minillama.model`` never import this package.
"""

from __future__ import annotations

from ..model.forward import REFERENCE, Assembly, mlp
from .attention import blocked_self_attention
from .fused import arrange_column_major, arrange_fused, fused_mlp, fused_self_attention
from .malloc import tune_malloc

ASSEMBLIES = ("reference", "cpu")


def cpu_assembly(config, lazy: bool) -> Assembly:
    """The NumPy assembly: fused layers where the config allows, blocked attention always."""
    if lazy:  # weights are upcast layer by layer at each forward: nothing to rearrange once
        return Assembly("cpu", self_attention=blocked_self_attention)
    if config.pretraining_tp == 1 and not config.attention_bias and not config.mlp_bias:
        return Assembly("cpu", self_attention=fused_self_attention, mlp=fused_mlp, arrange=arrange_fused)
    return Assembly("cpu", self_attention=blocked_self_attention, mlp=mlp, arrange=arrange_column_major)


def assembly_for(name: str | None, backend: str, config, lazy: bool) -> Assembly:
    """The assembly called ``name`` for this backend (None: "cpu" on NumPy, else "reference")."""
    if name is None:
        name = "cpu" if backend == "numpy" else "reference"
    if name == "reference":
        return REFERENCE
    if name == "cpu":
        if backend != "numpy":
            raise ValueError(f"assembly 'cpu' arranges NumPy arrays; use assembly='reference' on the {backend!r} backend")
        return cpu_assembly(config, lazy)
    raise ValueError(f"assembly must be one of {ASSEMBLIES}, got {name!r}")


__all__ = ["ASSEMBLIES", "assembly_for", "cpu_assembly", "tune_malloc"]
