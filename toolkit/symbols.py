"""The instrument grammar: what a ticker of the ledger may be (``symbol-pattern`` in ``[tool.toolkit]``).

A symbol is accepted when it passes the *floor* — the same whatever the grammar — and then matches the
configured pattern in full (``re.fullmatch``). The floor refuses what is never a symbol: a non-string,
the empty string, more than :data:`MAX_SYMBOL_LENGTH` (32) characters (the schema's own CHECK,
``length(ticker) BETWEEN 1 AND 32``), leading or trailing whitespace, any whitespace, any control or
invisible character (``str.isprintable``: line breaks, NUL, zero-width and bidi marks), the quote
characters ``'`` ``"`` and the backtick, ``;`` and the backslash.

``symbol-pattern`` is a preset name (:data:`PRESETS`) or a custom regular expression. A custom one
is validated at load (:func:`compile_symbol_pattern`): it must compile and must accept none of
:data:`HOSTILE_SYMBOLS` (empty, whitespace, control characters, quotes, ``;``, backslash, strings
over 32 characters, injection strings); otherwise the setting is refused.

Case is significant and never normalised: ``brk.b`` is a symbol of its own (the default grammar
accepts lower-case slugs), not ``BRK.B``. One definition, used by the trade writer
(``toolkit.domain.trade_problems``), the guarded connection (``toolkit.domain.TICKER_GUARD``, whose SQL
function is built from the connection's settings) and the ``trade_row_invalid`` rule (through
``ctx.settings``).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "MAX_SYMBOL_LENGTH",
    "DEFAULT_SYMBOL_PATTERN",
    "PRESETS",
    "PRESET_EXAMPLES",
    "HOSTILE_SYMBOLS",
    "SymbolGrammar",
    "compile_symbol_pattern",
    "floor_problem",
    "grammar",
]

#: The longest symbol: the schema's CHECK (``length(ticker) BETWEEN 1 AND 32``, migrations 001, 002, 004).
MAX_SYMBOL_LENGTH = 32
#: The longest custom pattern accepted (a setting, not a program).
_MAX_PATTERN_LENGTH = 1000
_REFUSED_CHARACTERS = frozenset("'\"`;\\")
_BOUND = rf"(?=.{{1,{MAX_SYMBOL_LENGTH}}}\Z)"   # every preset bounds its own length (checked at load too)

#: The default grammar (preset ``default``): runs of ASCII letters and digits joined by single
#: separators ``. - / = : _``, 1 to 32 characters, case significant. It accepts equities and share
#: classes (``AAPL``, ``BRK.B``, ``BF-B``, ``7203.T``), crypto pairs (``BTCUSDT``, ``BTC-USD``,
#: ``BTC/USDT``, ``BTC/USDT:USDT``), FX pairs (``EUR/USD``), futures (``ES=F``, ``ESZ4``) and
#: prediction-market ids (``0x1a2b3c…`` hex, ``will-x-happen-2026`` slugs, ``KXHIGHNY-24DEC05-B45.5``).
DEFAULT_SYMBOL_PATTERN = _BOUND + r"[A-Za-z0-9]+(?:[-./=:_][A-Za-z0-9]+)*"

#: Named grammars for ``symbol-pattern``. ``equity`` is the toolkit's grammar before symbols became a
#: setting; ``any`` is the floor alone (printable ASCII without space, quotes, backtick, ``;`` or
#: backslash).
PRESETS: dict[str, str] = {
    "default": DEFAULT_SYMBOL_PATTERN,
    "equity": r"[A-Z]{1,5}(?:[.-][A-Z]{1,2})?",
    "crypto": _BOUND + r"[A-Z0-9]{1,15}(?:[-/_]?[A-Z0-9]{1,15})?(?::[A-Z0-9]{1,10})?",
    "fx": r"[A-Z]{3}[-/_]?[A-Z]{3}(?:=X)?",
    "futures": r"/?[A-Z][A-Z0-9]{0,9}(?:=F)?",
    "any": r"[A-Za-z0-9!#$%&()*+,\-./:<=>?@\[\]^_{|}~]{1,32}",
}

#: What each preset accepts and refuses, for the README and the tests.
PRESET_EXAMPLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": (("AAPL", "BRK.B", "BTCUSDT", "BTC-USD", "EUR/USD", "ES=F", "BF-B", "brk.b", "BTC/USDT", "BTC/USDT:USDT",
                 "ESZ4", "7203.T", "0x1a2b3c4d5e6f", "will-x-happen-2026", "KXHIGHNY-24DEC05-B45.5"),
                ("-AAPL", "AAPL.", "A..B", "A--B", "AAPL!", "^GSPC", "/ES", "ÄPFEL", "A" * 33)),
    "equity": (("AAPL", "BRK.B", "BF-B", "F"), ("BTCUSDT", "EUR/USD", "ES=F", "7203.T", "brk.b", "ATTACK1")),
    "crypto": (("BTCUSDT", "BTC-USD", "BTC/USDT", "ETH_USDC", "BTC/USDT:USDT", "1INCHUSDT"),
               ("btcusdt", "BTC/", "EUR/USD/X", "ES=F", "A" * 33)),
    "fx": (("EUR/USD", "EURUSD", "GBP-JPY", "EUR_USD", "EURUSD=X"), ("EUR/US", "eur/usd", "BTC/USDT", "AAPL")),
    "futures": (("ES=F", "CL=F", "ESZ4", "NQH25", "/ES", "/ESZ24"), ("es=f", "ES=X", "7203.T", "BTC-USD")),
    "any": (("AAPL", "^GSPC", "$SPX", "BTC/USDT:USDT", "A--B", "x(1)"), ("ÄPFEL", "A" * 33)),
}

#: Strings no grammar may accept: a custom pattern that matches any of them is refused at load.
HOSTILE_SYMBOLS: tuple[str, ...] = (
    "", " ", "A B", " AAPL", "AAPL ", "AAPL\n", "AAPL\r\n", "A\tB", "\n", "A\x00", "\x00", "A\x1b[31m", "A\x7f",
    "AAPL\u200b", "\u202eLPAA", "A\u00a0B",
    "A'", "'", "A'B", 'A"', '"', "A`B", "A;B", ";", "A\\B", "\\",
    "AAPL'; DROP TABLE trades; --", "x' OR '1'='1", "1; SELECT 1", 'A" OR ""="',
    "A" * (MAX_SYMBOL_LENGTH + 1), "a" * (MAX_SYMBOL_LENGTH + 1), "1" * (MAX_SYMBOL_LENGTH + 1),
    "A." * 16 + "A", "a-" * 16 + "a", "0x" + "f" * (MAX_SYMBOL_LENGTH - 1), "A" * 65,
)


def floor_problem(value: object) -> str | None:
    """Why ``value`` can never be a symbol, whatever the grammar (``None`` when it may be one)."""
    if not isinstance(value, str):
        return f"not a string ({type(value).__name__})"
    if not value:
        return "empty"
    if len(value) > MAX_SYMBOL_LENGTH:
        return f"longer than {MAX_SYMBOL_LENGTH} characters"
    if value != value.strip():
        return "leading or trailing whitespace"
    if any(c.isspace() for c in value):
        return "contains whitespace"
    if not value.isprintable():
        return "contains a control or invisible character"
    if not _REFUSED_CHARACTERS.isdisjoint(value):
        return "contains a quote, backtick, ';' or backslash"
    return None


@dataclass(frozen=True)
class SymbolGrammar:
    """A compiled grammar: ``name`` is the preset's name, or ``"custom"``."""

    name: str
    pattern: str
    regex: re.Pattern[str]

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not a symbol of this grammar (``None`` when it is)."""
        why = floor_problem(value)
        if why is not None:
            return why
        if self.regex.fullmatch(value) is None:  # type: ignore[arg-type]
            return f"does not match symbol-pattern {self.describe()}"
        return None

    def accepts(self, value: object) -> bool:
        return self.problem(value) is None

    def describe(self) -> str:
        if self.name == "custom":
            shown = self.pattern if len(self.pattern) <= 60 else self.pattern[:57] + "..."
            return f"{shown!r}"
        accepted = PRESET_EXAMPLES[self.name][0][:6]
        return f"{self.name} (e.g. {', '.join(accepted)})"

    def sql_function(self) -> Callable[[object], bool]:
        """The guard's SQL function: a plain one-argument function (``create_function`` counts its arguments)."""
        accepts = self.accepts

        def toolkit_plausible_ticker(value: object) -> bool:
            return accepts(value)

        return toolkit_plausible_ticker


class SymbolPatternError(ValueError):
    """A ``symbol-pattern`` that is refused; the message says why (one line)."""


@lru_cache(maxsize=64)
def compile_symbol_pattern(value: str) -> SymbolGrammar:
    """A preset name or a custom regular expression, compiled and checked against
    :data:`HOSTILE_SYMBOLS`; :class:`SymbolPatternError` if it does not compile or accepts one of them."""
    if not isinstance(value, str) or not value:
        raise SymbolPatternError(f"must be a preset ({', '.join(PRESETS)}) or a regular expression, got {value!r}")
    name = value if value in PRESETS else "custom"
    pattern = PRESETS.get(value, value)
    if len(pattern) > _MAX_PATTERN_LENGTH:
        raise SymbolPatternError(f"is longer than {_MAX_PATTERN_LENGTH} characters")
    try:
        regex = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise SymbolPatternError(f"{pattern!r} is not a regular expression ({exc})") from None
    for hostile in HOSTILE_SYMBOLS:
        if regex.fullmatch(hostile) is not None:
            shown = hostile if len(hostile) <= MAX_SYMBOL_LENGTH else f"{hostile[:8]}... ({len(hostile)} characters)"
            raise SymbolPatternError(f"{pattern!r} accepts {shown if len(hostile) > MAX_SYMBOL_LENGTH else repr(shown)}, which is never a symbol ({floor_problem(hostile)})")
    return SymbolGrammar(name, pattern, regex)


def grammar(settings: object = None) -> SymbolGrammar:
    """The grammar of ``settings`` (its ``symbol_pattern``), or the default one."""
    value = getattr(settings, "symbol_pattern", None) or "default"
    return compile_symbol_pattern(value)
