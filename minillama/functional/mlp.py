"""SwiGLU, Llama's feed-forward block: a gated linear unit with the SiLU activation, and its backward."""

from __future__ import annotations

from ..backend import namespace_of
from .basics import linear, linear_backward, silu


def swiglu_mlp(x, gate_proj, up_proj, down_proj, gate_bias=None, up_bias=None, down_bias=None):
    """The feed-forward block: down(silu(gate(x)) * up(x)).

    x: (..., hidden); gate_proj, up_proj: (intermediate, hidden); down_proj: (hidden, intermediate)
    """
    gate = silu(linear(x, gate_proj, gate_bias))  # (..., intermediate)
    up = linear(x, up_proj, up_bias)  # (..., intermediate)
    return linear(gate * up, down_proj, down_bias)  # (..., hidden)


def swiglu_mlp_backward(grad_y, x, gate_proj, up_proj, down_proj, gate_bias=None, up_bias=None, down_bias=None,
                        gate_in=None, up=None):
    """Gradients of ``swiglu_mlp``, recomputing the forward's intermediates unless given.

    With h = silu(a) * u (a the gate's and u the up projection's output), the
    gradient of h flows to a through silu and to u through the gate; x collects
    both branches. grad_y: (..., hidden) -> a dict of gradients keyed "x",
    "gate_proj", "up_proj", "down_proj", plus "gate_bias", "up_bias", "down_bias"
    for the biases given. gate_in, up: the forward's gate(x) and up(x), if it kept them
    (two matrix products fewer here).
    """
    xp = namespace_of(x)
    if gate_in is None:
        gate_in = linear(x, gate_proj, gate_bias)  # a: (..., intermediate)
    if up is None:
        up = linear(x, up_proj, up_bias)  # u: (..., intermediate)
    sigmoid = 1.0 / (1.0 + xp.exp(-gate_in))  # s(a), computed once for silu and its derivative
    gate = gate_in * sigmoid  # silu(a) = a s(a)

    grad_hidden, grad_down, grad_down_bias = linear_backward(grad_y, gate * up, down_proj, down_bias)
    grad_up = grad_hidden * gate  # (..., intermediate)
    # silu'(a) = s (1 + a (1 - s)) = s + silu(a) (1 - s); the products below reuse their own temporaries.
    silu_slope = 1.0 - sigmoid
    silu_slope *= gate
    silu_slope += sigmoid
    grad_gate_in = grad_hidden  # grad_hidden (a fresh product) becomes the gradient of a, in place
    grad_gate_in *= up
    grad_gate_in *= silu_slope  # (..., intermediate)
    grad_x, grad_gate, grad_gate_bias = linear_backward(grad_gate_in, x, gate_proj, gate_bias)
    grad_x_up, grad_up_proj, grad_up_bias = linear_backward(grad_up, x, up_proj, up_bias)
    grad_x += grad_x_up  # x feeds both branches

    grads = {"x": grad_x, "gate_proj": grad_gate, "up_proj": grad_up_proj, "down_proj": grad_down}
    for name, grad in (("gate_bias", grad_gate_bias), ("up_bias", grad_up_bias), ("down_bias", grad_down_bias)):
        if grad is not None:
            grads[name] = grad
    return grads
