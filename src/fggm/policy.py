"""Old name of :mod:`fggm.mimo.policy` (kept so existing code and README examples still import it).

``import fggm.policy`` gives the very same module object as ``import fggm.mimo.policy``.
"""

import sys

import fggm.mimo.policy as _moved

sys.modules[__name__] = _moved
