"""SMS length maths: GSM-7 or UCS-2, how many parts a text needs, and the parts themselves."""

from __future__ import annotations

from typing import Literal

import msgspec

Encoding = Literal["gsm7", "ucs2"]

# GSM 03.38 default alphabet (without ESC, which only introduces the extension table).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each is sent as ESC + char, so it costs two septets.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE = 160
# 7 septets of every part go to the concatenation header (6 octets of UDH, padded to a septet boundary).
GSM7_PART = 153
UCS2_SINGLE = 70
# 3 UTF-16 code units (6 octets) of every part go to the concatenation header.
UCS2_PART = 67


class SegmentCount(msgspec.Struct, frozen=True, kw_only=True):
    """How a text goes out: its encoding, the parts billed, and its length in septets or UTF-16 units."""

    encoding: Encoding
    segments: int
    units: int


def encoding_of(text: str) -> Encoding:
    """GSM-7 when every character is in the GSM 03.38 tables; anything else (Cyrillic, emoji) is UCS-2."""
    for char in text:
        if char not in GSM7_BASIC and char not in GSM7_EXTENSION:
            return "ucs2"
    return "gsm7"


def _unit_width(char: str, encoding: Encoding) -> int:
    if encoding == "gsm7":
        return 2 if char in GSM7_EXTENSION else 1
    # Outside the Basic Multilingual Plane (most emoji) UTF-16 needs a surrogate pair.
    return 2 if ord(char) > 0xFFFF else 1


def split_segments(text: str) -> tuple[Encoding, list[str]]:
    """The parts a phone reassembles, as gateways and SMPP cut them.

    A character never straddles two parts: an ESC pair or a surrogate pair that would not fit in what is
    left of a part starts the next one, which is why the count is not simply ceil(units / part size).
    """
    encoding = encoding_of(text)
    single, part_size = (GSM7_SINGLE, GSM7_PART) if encoding == "gsm7" else (UCS2_SINGLE, UCS2_PART)
    units = sum(_unit_width(char, encoding) for char in text)
    if units <= single:
        return encoding, [text]
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for char in text:
        width = _unit_width(char, encoding)
        if used + width > part_size:
            parts.append("".join(current))
            current, used = [], 0
        current.append(char)
        used += width
    parts.append("".join(current))
    return encoding, parts


def count_segments(text: str) -> SegmentCount:
    """Parts billed for `text` (an empty text is still one SMS) and its length in encoding units."""
    encoding, parts = split_segments(text)
    units = sum(_unit_width(char, encoding) for char in text)
    return SegmentCount(encoding=encoding, segments=len(parts), units=units)
