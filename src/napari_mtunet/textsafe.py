"""Text from files shown to people: refusing unsafe names, escaping what is printed.

Class names, class-folder names and file paths come from datasets and
model files.  Printed raw, a name holding ``ESC ] 0 ; ... BEL ESC [ 2 J``
retitles the terminal and clears the screen; a U+202E right-to-left
override shows ``gpj.exe`` as ``exe.jpg``; a lone surrogate cannot even be
encoded and ends a run with ``UnicodeEncodeError``.  So:

- :func:`unsafe_characters` finds them: control characters (C0, DEL, C1),
  bidirectional formatting characters (U+061C, U+200E/F, U+202A-U+202E,
  U+2066-U+2069), line/paragraph separators (U+2028/9) and unpaired
  surrogates;
- :func:`check_name` refuses such a name where it enters (a model's class
  names when a checkpoint is loaded, class labels when a dataset is read);
- :func:`escape` / :func:`escape_lines` make any text printable before it
  reaches a terminal (each unsafe character as ``\\xNN`` / ``\\uNNNN``).

No Qt, no torch; used by the config, the dataset layouts and the CLI.
"""

from __future__ import annotations

import unicodedata

#: Bidirectional formatting characters (Unicode's Bidi_Control property).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SEPARATORS = frozenset("\u2028\u2029")


def is_unsafe(ch: str) -> bool:
    """Whether one character must not be shown raw (see the module docstring)."""
    if ch in BIDI_CONTROLS or ch in _SEPARATORS:
        return True
    cat = unicodedata.category(ch)
    return cat in ("Cc", "Cs")


def unsafe_characters(text: str) -> list[str]:
    """The distinct unsafe characters of ``text``, in order of appearance."""
    seen: list[str] = []
    for ch in str(text):
        if is_unsafe(ch) and ch not in seen:
            seen.append(ch)
    return seen


def describe(ch: str) -> str:
    """``U+001B (ESCAPE)``-style name of one character."""
    name = unicodedata.name(ch, "")
    if not name and unicodedata.category(ch) == "Cs":
        name = "unpaired surrogate"
    elif not name and unicodedata.category(ch) == "Cc":
        name = "control character"
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: object) -> str:
    """``text`` with every unsafe character (newlines and tabs included) written as an escape sequence."""
    return "".join(_escape_char(ch) if is_unsafe(ch) else ch for ch in str(text))


def escape_lines(text: object) -> str:
    """Like :func:`escape`, keeping line breaks and tabs (for multi-line reports and summaries)."""
    return "\n".join(
        "".join(ch if ch == "\t" or not is_unsafe(ch) else _escape_char(ch) for ch in line)
        for line in str(text).split("\n")
    )


def check_name(name: str, *, what: str = "class name") -> None:
    """Raise ``ValueError`` naming the character when ``name`` holds an unsafe character."""
    bad = unsafe_characters(name)
    if bad:
        shown = escape(name)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ValueError(
            f"{what} '{shown}' contains {', '.join(describe(c) for c in bad[:3])}: control, bidirectional-override "
            "and unpaired-surrogate characters are refused in names (they can take over a terminal or disguise "
            "the text); rename it"
        )


__all__ = ["BIDI_CONTROLS", "check_name", "describe", "escape", "escape_lines", "is_unsafe", "unsafe_characters"]
