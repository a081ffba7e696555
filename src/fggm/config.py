"""Old name of :mod:`fggm.mimo.config` (kept so existing code and README examples still import it).

``import fggm.config`` gives the very same module object as ``import fggm.mimo.config``.
"""

import sys

import fggm.mimo.config as _moved

sys.modules[__name__] = _moved
