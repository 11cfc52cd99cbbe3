"""Import the `arch` package (the reference GARCH implementation) for the cross-checks.

arch 7.2.0 decorates a method at import time with pandas' private
`deprecate_kwarg(old, new)`; pandas 3 changed that helper to
`deprecate_kwarg(klass, old, new)`, so `import arch` raises TypeError with the pandas
the environment resolves (3.x; requirements.txt pins arch but not pandas). Until the
pins are fixed (pandas<3, or an arch release that supports pandas 3), this adapts the
call for the duration of the import only and restores pandas afterwards. When arch
imports cleanly nothing is patched.
"""
from __future__ import annotations

import inspect


def import_arch_model():
    try:
        from arch import arch_model

        return arch_model
    except TypeError as exc:
        failure = exc
    import sys

    import pandas.util._decorators as decorators

    original = decorators.deprecate_kwarg
    if list(inspect.signature(original).parameters)[:1] != ["klass"]:
        raise failure
    for name in [m for m in sys.modules if m == "arch" or m.startswith("arch.")]:
        del sys.modules[name]

    def compatible(*args, **kwargs):
        if args and isinstance(args[0], str):
            args = (FutureWarning, *args)
        return original(*args, **kwargs)

    decorators.deprecate_kwarg = compatible
    try:
        from arch import arch_model
    finally:
        decorators.deprecate_kwarg = original
    return arch_model
