"""The MU-MIMO problem: channels, ZF physics, the scheduling environment, schedulers, the SAC
victim, its attacker's view, and the FGGM attack on it.

The physical layer's names (:mod:`fggm.mimo.physics`) are importable from here directly, as they
were when this was a single module.

Example:
    >>> from fggm.mimo import SubsetCodec
    >>> SubsetCodec(16, 4).n
    2516
"""

from fggm.mimo.physics import (SubsetCodec, all_subsets_se, inv_hpd, jain, scheduled_se, single_user_se,
                               subset_se, zf_se, zf_sinr)

__all__ = ["SubsetCodec", "all_subsets_se", "inv_hpd", "jain", "scheduled_se", "single_user_se", "subset_se",
           "zf_se", "zf_sinr"]
