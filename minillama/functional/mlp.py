"""SwiGLU, Llama's feed-forward block: a gated linear unit with the SiLU activation."""

from __future__ import annotations

from .basics import linear, silu


def swiglu_mlp(x, gate_proj, up_proj, down_proj, gate_bias=None, up_bias=None, down_bias=None):
    """The feed-forward block: down(silu(gate(x)) * up(x)).

    x: (..., hidden); gate_proj, up_proj: (intermediate, hidden); down_proj: (hidden, intermediate)
    """
    gate = silu(linear(x, gate_proj, gate_bias))  # (..., intermediate)
    up = linear(x, up_proj, up_bias)  # (..., intermediate)
    return linear(gate * up, down_proj, down_bias)  # (..., hidden)
