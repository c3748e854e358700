"""Fonts for sandboxed plots: the font names programs ask for, mapped to the image's fonts, and a CJK fallback.

LLM-written programs name the fonts of the machine they imagine (`rcParams['font.sans-serif'] =
['SimHei']`, "Microsoft YaHei", "Arial"), and styles (`sns.set_theme()`, `plt.style.use(...)`) reset
the font family to a list without any CJK font. The image has one CJK font and DejaVu. So:

- each of those names becomes another name of the image's font that looks most like it (an entry
  in matplotlib's font list with the same file), so a lookup of "SimHei" finds the CJK font, with
  no "findfont: Font family ... not found" warning at every text;
- every font lookup gets the CJK font (then DejaVu Sans) appended as fallbacks, so whatever
  family the program chose, each glyph its fonts lack is drawn from them (matplotlib >= 3.6 falls
  back glyph by glyph along that list) instead of a box and a "Glyph ... missing" warning;
- a font file the program names that does not exist here (`FontProperties(fname='C:/Windows/
  Fonts/simhei.ttf')`) is drawn with the CJK font instead of failing at the first text.

install() is called by capture_backend when matplotlib loads it, before anything is drawn.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from types import ModuleType
from typing import Any

CJK_FAMILY = "WenQuanYi Micro Hei"
LATIN_FAMILY = "DejaVu Sans"
# Chinese, Japanese and Korean fonts of Windows, macOS, Linux and Android that programs name; the
# image's CJK font has the glyphs of all three scripts. "Arial Unicode MS" too: it is named for its CJK glyphs.
# Each alias is one more entry every uncached font lookup scores: the list holds the names in use.
CJK_ALIASES = (
    "SimHei", "SimSun", "NSimSun", "KaiTi", "FangSong", "STHeiti", "STSong", "STKaiti", "STXihei", "Microsoft YaHei",
    "Microsoft JhengHei", "MingLiU", "PMingLiU", "Heiti SC", "Heiti TC", "Songti SC", "PingFang SC", "PingFang TC",
    "PingFang HK", "Hiragino Sans GB", "Arial Unicode MS", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK JP",
    "Noto Sans CJK KR", "Noto Serif CJK SC", "Noto Sans SC", "Noto Sans TC", "Noto Sans JP", "Noto Sans KR",
    "Source Han Sans SC", "Source Han Sans CN", "Source Han Serif SC", "WenQuanYi Zen Hei", "Droid Sans Fallback",
    "AR PL UMing CN", "MS Gothic", "Yu Gothic", "Meiryo", "IPAexGothic", "Malgun Gothic", "AppleGothic", "NanumGothic",
)
# Latin fonts programs name that the image lacks: the DejaVu family matplotlib would fall back to
# anyway, minus its warning at every text drawn.
LATIN_ALIASES = {
    "Arial": "DejaVu Sans", "Helvetica": "DejaVu Sans", "Calibri": "DejaVu Sans", "Verdana": "DejaVu Sans",
    "Times New Roman": "DejaVu Serif", "Times": "DejaVu Serif", "Courier New": "DejaVu Sans Mono",
}


class NoBoldWarning:
    """Logging filter: drops matplotlib's "Failed to find font weight" for the CJK font, which has one weight only."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for that warning about the CJK font or an alias of it (drawn regular, as SimHei is on Windows)."""
        message, args = record.msg, record.args
        return not (isinstance(message, str) and message.startswith("findfont: Failed to find font weight")
                    and isinstance(args, tuple) and len(args) > 1 and (args[1] == CJK_FAMILY or args[1] in CJK_ALIASES))


def alias_entries(ttflist: list[Any]) -> list[Any]:
    """Entries for matplotlib's font list: each alias as a copy of its target's entries under the alias's name."""
    by_name: dict[str, list[Any]] = {}
    for entry in ttflist:
        by_name.setdefault(entry.name, []).append(entry)
    added = []
    cjk = [entry for entry in by_name.get(CJK_FAMILY, ()) if entry.style == "normal"][:1]
    if cjk:
        # Not a font the deployment really has: that one stays itself.
        added.extend(dataclasses.replace(cjk[0], name=name) for name in CJK_ALIASES if name not in by_name)
    for name, target in LATIN_ALIASES.items():
        if name in by_name:
            continue
        # Upright and italic, regular and bold (one file each): any lookup finds a face it names exactly.
        faces: dict[tuple[str, Any], Any] = {}
        for entry in by_name.get(target, ()):
            if entry.weight in (400, 700) and entry.stretch == "normal":
                faces.setdefault((entry.style, entry.weight), entry)
        added.extend(dataclasses.replace(entry, name=name) for entry in faces.values())
    return added


def install(font_manager: ModuleType) -> None:
    """Add the aliases to matplotlib's font list and the fallbacks to its font lookup; once per process."""
    manager = font_manager.fontManager
    if getattr(manager, "_sandbox_fonts", False) or not hasattr(manager, "_find_fonts_by_props"):
        return  # installed already, or a matplotlib without per-glyph fallback: its defaults stay
    manager._sandbox_fonts = True
    manager.ttflist.extend(alias_entries(manager.ttflist))
    logging.getLogger(font_manager.__name__).addFilter(NoBoldWarning())
    find_fonts = manager._find_fonts_by_props
    fallbacks = []  # the CJK font, then DejaVu Sans: each where the image has it
    for family in (CJK_FAMILY, LATIN_FAMILY):
        try:
            fallbacks.append(manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False))
        except ValueError:
            pass
    missing_files: dict[Any, bool] = {}

    def find_fonts_by_props(prop: Any, fontext: str = "ttf", directory: Any = None, fallback_to_default: bool = True,
                            rebuild_if_missing: bool = True) -> list[Any]:
        """The fonts matplotlib picks for prop, then the fallbacks it lacks (see the module's docstring)."""
        if fontext != "ttf" or directory is not None:
            return find_fonts(prop, fontext, directory, fallback_to_default, rebuild_if_missing)
        prop = font_manager.FontProperties._from_any(prop)
        file = prop.get_file()
        if file is not None:
            name = os.fspath(file)
            if name not in missing_files:  # stat once per file, not at every text
                missing_files[name] = not os.path.isfile(name)
            if missing_files[name]:
                prop = prop.copy()
                prop.set_file(None)
                prop.set_family(CJK_FAMILY)
        fonts = find_fonts(prop, fontext, directory, fallback_to_default, rebuild_if_missing)
        extra = [font for font in fallbacks if font not in fonts]
        return fonts + extra if extra else fonts

    manager._find_fonts_by_props = find_fonts_by_props
