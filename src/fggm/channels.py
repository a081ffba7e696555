"""Old name of :mod:`fggm.mimo.channels` (kept so existing code and README examples still import it).

``import fggm.channels`` gives the very same module object as ``import fggm.mimo.channels``.
"""

import sys

import fggm.mimo.channels as _moved

sys.modules[__name__] = _moved
