"""Scaled multilayer perceptrons (spec section 2.1).

Weights are stored raw, initialised N(0, 1), and multiplied in the forward pass by a
fixed gain: ``kappa / sqrt(fan_in)`` for input and hidden layers (``kappa`` makes
``silu`` of a unit Gaussian unit-variance again), ``1 / sqrt(fan_in)`` for the output
layer and for a single linear layer, and every gain of an MLP with biases is further
multiplied by 0.01. The paper's learning rates are for this parametrisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import MLPSpec

__all__ = ["ScaledMLP", "SILU_GAIN"]

SILU_GAIN = 1.67462  # ~ 1 / sqrt(E[silu(z)^2]) for z ~ N(0, 1)


class ScaledMLP(nn.Module):
    """``d_in -> d_out`` MLP with residual blocks, SiLU activations and fixed gains.

    Deep form::

        h = Dense_in(x)                                   # d_in -> F
        for each of B blocks: r = h; Lb times h = Dense(silu(h)); h = (h + r) / sqrt(2)
        y = Dense_out(silu(h))                            # F -> d_out

    Linear form: ``y = Dense_out(x)``. Parameters: ``w_in`` (d_in, F), ``w_hidden``
    (B*Lb, F, F) in block-major order, ``w_out`` (F, d_out), and matching ``b_*`` when
    ``bias`` is true. Without biases the MLP maps 0 to 0.
    """

    def __init__(self, d_in: int, d_out: int, spec: MLPSpec, bias: bool = False) -> None:
        super().__init__()
        self.d_in, self.d_out, self.spec, self.bias = d_in, d_out, spec, bias
        scale = 0.01 if bias else 1.0
        if spec.linear:
            self.w_in = self.w_hidden = None
            self.gain_in = self.gain_hidden = 0.0
            self.w_out = nn.Parameter(torch.randn(d_in, d_out))
            self.gain_out = scale / math.sqrt(d_in)
            self.b_in = self.b_hidden = None
        else:
            width, n_hidden = spec.width, spec.blocks * spec.layers
            self.w_in = nn.Parameter(torch.randn(d_in, width))
            self.w_hidden = nn.Parameter(torch.randn(n_hidden, width, width))
            self.w_out = nn.Parameter(torch.randn(width, d_out))
            self.gain_in = scale * SILU_GAIN / math.sqrt(d_in)
            self.gain_hidden = scale * SILU_GAIN / math.sqrt(width)
            self.gain_out = scale / math.sqrt(width)
            self.b_in = nn.Parameter(torch.zeros(width)) if bias else None
            self.b_hidden = nn.Parameter(torch.zeros(n_hidden, width)) if bias else None
        self.b_out = nn.Parameter(torch.zeros(d_out)) if bias else None

    @staticmethod
    def _dense(x: torch.Tensor, w: torch.Tensor, gain: float, b: torch.Tensor | None) -> torch.Tensor:
        # Scaling the (small) weight matrix is cheaper than scaling the (E, F) output.
        if b is None:
            return x @ (w * gain)
        return torch.addmm(b, x.reshape(-1, x.shape[-1]), w * gain).reshape(*x.shape[:-1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.linear:
            return self._dense(x, self.w_out, self.gain_out, self.b_out)
        h = self._dense(x, self.w_in, self.gain_in, self.b_in)
        k = 0
        for _ in range(self.spec.blocks):
            r = h
            for _ in range(self.spec.layers):
                b = None if self.b_hidden is None else self.b_hidden[k]
                h = self._dense(F.silu(h), self.w_hidden[k], self.gain_hidden, b)
                k += 1
            h = (h + r) * (1.0 / math.sqrt(2.0))
        return self._dense(F.silu(h), self.w_out, self.gain_out, self.b_out)

    def extra_repr(self) -> str:
        return f"{self.d_in} -> {self.d_out}, {self.spec}, bias={self.bias}"
