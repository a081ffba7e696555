"""Old name of :mod:`fggm.mimo.env` (kept so existing code and README examples still import it).

``import fggm.env`` gives the very same module object as ``import fggm.mimo.env``.
"""

import sys

import fggm.mimo.env as _moved

sys.modules[__name__] = _moved
