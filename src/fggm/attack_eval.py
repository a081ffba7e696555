"""Old name of :mod:`fggm.mimo.attack_eval` (kept so existing code and README examples still import it).

``import fggm.attack_eval`` gives the very same module object as ``import fggm.mimo.attack_eval``.
"""

import sys

import fggm.mimo.attack_eval as _moved

sys.modules[__name__] = _moved
