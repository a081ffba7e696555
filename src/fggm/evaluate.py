"""Old name of :mod:`fggm.mimo.evaluate` (kept so existing code and README examples still import it).

``import fggm.evaluate`` gives the very same module object as ``import fggm.mimo.evaluate``.
"""

import sys

import fggm.mimo.evaluate as _moved

sys.modules[__name__] = _moved
