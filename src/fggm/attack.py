"""Old name of :mod:`fggm.mimo.attack` (kept so existing code and README examples still import it).

``import fggm.attack`` gives the very same module object as ``import fggm.mimo.attack``.
"""

import sys

import fggm.mimo.attack as _moved

sys.modules[__name__] = _moved
