"""Names LLM-written code still uses that the image's libraries removed, where a removed name has an exact successor.

Each alias is installed when its library is first imported (a program that never imports pandas
pays nothing), and only where the library lacks the name: a deployment that pins other versions
in `dependencies` gets no change of behaviour. The aliases, and why each is exact:

- numpy: `np.NaN`, `np.Inf`, `np.NINF`, `np.PINF`, `np.float_`, `np.complex_`, `np.unicode_`,
  `np.string_` (removed in numpy 2.0; the same objects under their new names).
- pandas: `DataFrame.append` and `Series.append` (removed in pandas 2.0): pandas 1.x's own
  semantics, done with `pd.concat` as its deprecation message said.
- matplotlib: the style names `seaborn`, `seaborn-<variant>` (removed in matplotlib 3.8): the same
  style files, renamed `seaborn-v0_8...` in 3.6.

worker.py applies each patch right after its library's first import (its ImportHooks).
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

NUMPY_ALIASES = {"NaN": "nan", "Inf": "inf", "PINF": "inf", "float_": "float64", "complex_": "complex128",
                 "unicode_": "str_", "string_": "bytes_"}


def patch_numpy(numpy: ModuleType) -> None:
    """numpy 2's removed aliases, where missing."""
    for old, new in NUMPY_ALIASES.items():
        if old not in numpy.__dict__ and hasattr(numpy, new):
            setattr(numpy, old, getattr(numpy, new))
    if "NINF" not in numpy.__dict__:
        numpy.NINF = -numpy.inf


def _frame_append(self: Any, other: Any, ignore_index: bool = False, verify_integrity: bool = False,
                  sort: bool = False) -> Any:
    """DataFrame.append as pandas 1.5 had it (rows of another frame, a Series, a dict or a list of them)."""
    import pandas as pd

    if isinstance(other, (pd.Series, dict)):
        if isinstance(other, dict):
            if not ignore_index:
                raise TypeError("Can only append a dict if ignore_index=True")
            other = pd.Series(other)
        if other.name is None and not ignore_index:
            raise TypeError("Can only append a Series if ignore_index=True or if the Series has a name")
        other = other.to_frame().T.infer_objects()
    elif isinstance(other, list):
        if not other:
            return self.copy()
        if not isinstance(other[0], pd.DataFrame):
            other = pd.DataFrame(other)
    pieces = [self, *other] if isinstance(other, list) else [self, other]
    return pd.concat(pieces, ignore_index=ignore_index, verify_integrity=verify_integrity, sort=sort)


def _series_append(self: Any, to_append: Any, ignore_index: bool = False, verify_integrity: bool = False) -> Any:
    """Series.append as pandas 1.5 had it."""
    import pandas as pd

    pieces = [self, *to_append] if isinstance(to_append, (list, tuple)) else [self, to_append]
    return pd.concat(pieces, ignore_index=ignore_index, verify_integrity=verify_integrity)


def patch_pandas(pandas: ModuleType) -> None:
    """pandas 2's removed DataFrame.append and Series.append, where missing."""
    if not hasattr(pandas.DataFrame, "append"):
        pandas.DataFrame.append = _frame_append
    if not hasattr(pandas.Series, "append"):
        pandas.Series.append = _series_append


def patch_matplotlib_style(style_core: ModuleType) -> None:
    """Style names `seaborn` and `seaborn-<variant>` as the `seaborn-v0_8` styles they were renamed to."""
    original_use = style_core.use

    def use(style: Any) -> None:
        return original_use(_renamed_style(style, style_core.library))

    use.__doc__, use.__wrapped__ = original_use.__doc__, original_use
    style_core.use = use
    style_package = sys.modules.get("matplotlib.style")
    if style_package is not None and getattr(style_package, "use", None) is original_use:
        style_package.use = use


def _renamed_style(style: Any, library: Any) -> Any:
    """The style (or list of styles) with each old seaborn name replaced by its v0_8 name when that exists."""
    if isinstance(style, list):
        return [_renamed_style(item, library) for item in style]
    if isinstance(style, str) and style not in library and style.startswith("seaborn") and "v0_8" not in style:
        renamed = "seaborn-v0_8" + style[len("seaborn"):]
        if renamed in library:
            return renamed
    return style
