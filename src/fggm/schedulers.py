"""Old name of :mod:`fggm.mimo.schedulers` (kept so existing code and README examples still import it).

``import fggm.schedulers`` gives the very same module object as ``import fggm.mimo.schedulers``.
"""

import sys

import fggm.mimo.schedulers as _moved

sys.modules[__name__] = _moved
