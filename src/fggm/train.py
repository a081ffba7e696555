"""Old name of :mod:`fggm.mimo.train` (kept so existing code and README examples still import it).

``import fggm.train`` gives the very same module object as ``import fggm.mimo.train``.
"""

import sys

import fggm.mimo.train as _moved

sys.modules[__name__] = _moved
