"""Old name of :mod:`fggm.core.bounds` (kept so existing code and README examples still import it).

``import fggm.bounds`` gives the very same module object as ``import fggm.core.bounds``.
"""

import sys

import fggm.core.bounds as _moved

sys.modules[__name__] = _moved
