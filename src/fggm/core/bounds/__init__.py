"""Certified output bounds of small feed-forward policies over an input box.

Two abstract domains over a box ``[lower, upper]`` (shape ``[batch, in]``):

* :func:`ibp` -- interval bound propagation, layer by layer.
* :func:`crown` -- backward linear relaxation (DeepPoly/CROWN).  Every pre-activation bound is
  itself computed by a backward pass to the input box, intersected with IBP, so the result is
  never looser than :func:`ibp`.  ``alpha=True`` runs alpha-CROWN: the free slopes of every
  layer's relaxation (ReLU lower slopes, clip bends, tanh tangent points), separately for every
  intermediate bound and for the output, optimised by gradient steps on the bounds.
* ``C=`` (both domains): bound ``C @ net(x)`` directly, as if a bias-free ``nn.Linear(C)`` were
  appended to the net (tighter than differences of separate bounds).

Supported layers: ``nn.Linear``, ``nn.ReLU``, ``nn.Tanh``, ``nn.Hardtanh`` (and so ``nn.ReLU6``),
:class:`Clip`, :class:`Affine` (an element-wise ``x * scale + shift``, e.g. an observation
normaliser), ``nn.Identity``, ``nn.Flatten`` and nested ``nn.Sequential``.  Any other layer
raises ``TypeError`` naming it.

The corners may require grad: the bounds are differentiable with respect to them, through the
intermediate bounds and every relaxation (not with respect to the network's weights), which is
what a gradient attack through a certificate needs.  A coordinate with ``lower == upper`` is a
point.  Bounds are rounded outward, so ``lb <= ub`` in every dtype.

Modules: :mod:`~fggm.core.bounds.layers` (layers, parsing, IBP), :mod:`~fggm.core.bounds.relaxations`
(the linear lines), :mod:`~fggm.core.bounds.backward` (the CROWN pass),
:mod:`~fggm.core.bounds.alpha` (alpha-CROWN and :func:`crown`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0); net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> lo, up = -torch.ones(1, 3), torch.ones(1, 3)
    >>> (il, iu), (cl, cu) = ibp(net, lo, up), crown(net, lo, up)
    >>> bool(((cl >= il) & (cu <= iu)).all())
    True
"""

from fggm.core.bounds.alpha import crown
from fggm.core.bounds.layers import SUPPORTED_LAYERS, Affine, Clip, ibp

__all__ = ["Affine", "Clip", "ibp", "crown", "SUPPORTED_LAYERS"]
