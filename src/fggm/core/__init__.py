"""The problem-agnostic core of FGGM. Nothing here knows which problem (MU-MIMO, knapsack) is attacked.

A problem plugs in by giving

* the attacker's view of its policy (an ``nn.Sequential`` from raw observations to the head's
  pre-squash output) and the normaliser's statistics (:class:`~fggm.core.threat.NormaliserStats`:
  the box ``mean +- k sigma`` over every entry the attackers do not control, clamped into the
  problem's physical limits);
* what the attackers control (:class:`~fggm.core.threat.Controlled`: a differentiable map from
  forged parameters to observation entries, with its projection, restarts and step scale);
* the goal as a specification on the policy output (:mod:`fggm.core.spec`: runs of acceptable
  actions for a scalar head, a specification matrix ``C`` for a vector head).

:mod:`fggm.core.attack` then runs the FGGM gradient loop through certified bounds
(:mod:`fggm.core.bounds`), the float64 certificate and the baselines (mean-point PGD, EOT-PGD,
random); :mod:`fggm.core.stats` holds the paired bootstrap used by every evaluation.

Example:
    >>> import torch
    >>> from fggm.core.bounds import ibp
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 1))
    >>> lo, hi = ibp(net, torch.zeros(1, 2), torch.ones(1, 2))
    >>> bool((lo <= hi).all())
    True
"""
