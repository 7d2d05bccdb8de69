"""SwiGLU, Llama's feed-forward block: a gated linear unit with the SiLU activation, and its backward."""

from __future__ import annotations

from .basics import linear, linear_backward, silu, silu_backward


def swiglu_mlp(x, gate_proj, up_proj, down_proj, gate_bias=None, up_bias=None, down_bias=None):
    """The feed-forward block: down(silu(gate(x)) * up(x)).

    x: (..., hidden); gate_proj, up_proj: (intermediate, hidden); down_proj: (hidden, intermediate)
    """
    gate = silu(linear(x, gate_proj, gate_bias))  # (..., intermediate)
    up = linear(x, up_proj, up_bias)  # (..., intermediate)
    return linear(gate * up, down_proj, down_bias)  # (..., hidden)


def swiglu_mlp_backward(grad_y, x, gate_proj, up_proj, down_proj, gate_bias=None, up_bias=None, down_bias=None):
    """Gradients of ``swiglu_mlp``, recomputing the forward's intermediates.

    With h = silu(a) * u (a the gate's and u the up projection's output), the
    gradient of h flows to a through silu and to u through the gate; x collects
    both branches. grad_y: (..., hidden) -> a dict of gradients keyed "x",
    "gate_proj", "up_proj", "down_proj", plus "gate_bias", "up_bias", "down_bias"
    for the biases given.
    """
    gate_in = linear(x, gate_proj, gate_bias)  # (..., intermediate)
    gate = silu(gate_in)
    up = linear(x, up_proj, up_bias)  # (..., intermediate)

    grad_hidden, grad_down, grad_down_bias = linear_backward(grad_y, gate * up, down_proj, down_bias)
    grad_gate_in = silu_backward(grad_hidden * up, gate_in)  # (..., intermediate)
    grad_up = grad_hidden * gate  # (..., intermediate)
    grad_x_gate, grad_gate, grad_gate_bias = linear_backward(grad_gate_in, x, gate_proj, gate_bias)
    grad_x_up, grad_up_proj, grad_up_bias = linear_backward(grad_up, x, up_proj, up_bias)

    grads = {"x": grad_x_gate + grad_x_up, "gate_proj": grad_gate, "up_proj": grad_up_proj, "down_proj": grad_down}
    for name, grad in (("gate_bias", grad_gate_bias), ("up_bias", grad_up_bias), ("down_bias", grad_down_bias)):
        if grad is not None:
            grads[name] = grad
    return grads
