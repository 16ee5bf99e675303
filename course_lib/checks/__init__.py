"""Exercise checks: `checks.check_*(your_function)` replies like a good TA.

One module per notebook (`nb03_autoregressive.py` holds notebook 03's checks); every
`check_*` function of every module is available here, so a notebook writes
`from course_lib import checks` and then `checks.check_attention(my_attention)`.
"""

import importlib
import pkgutil

from course_lib.checks._core import CheckFailed, expect_close, run_check

__all__ = ["CheckFailed", "expect_close", "run_check"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in dir(_module):
        if _name.startswith("check_"):
            if globals().get(_name, getattr(_module, _name)) is not getattr(_module, _name):
                raise ImportError(f"two checks are called {_name}: rename the one in {_module}")
            globals()[_name] = getattr(_module, _name)
            __all__.append(_name)
