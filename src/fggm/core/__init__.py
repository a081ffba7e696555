"""The problem-agnostic core of FGGM: certified bounds over boxes of observations (and the attack
machinery built on them). Nothing here knows which problem (MU-MIMO, knapsack) is attacked.

Example:
    >>> import torch
    >>> from fggm.core.bounds import ibp
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 1))
    >>> lo, hi = ibp(net, torch.zeros(1, 2), torch.ones(1, 2))
    >>> bool((lo <= hi).all())
    True
"""
