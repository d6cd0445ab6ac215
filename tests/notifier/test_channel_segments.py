"""SMS segment maths at every boundary: GSM-7 160/153 with two-septet extension characters, UCS-2 70/67."""

from __future__ import annotations

import pytest

from services.notifier.domain.segments import SegmentCount, count_segments, split_segments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SegmentCount(encoding="gsm7", segments=1, units=0)),
        ("a" * 160, SegmentCount(encoding="gsm7", segments=1, units=160)),
        ("a" * 161, SegmentCount(encoding="gsm7", segments=2, units=161)),
        ("a" * 306, SegmentCount(encoding="gsm7", segments=2, units=306)),
        ("a" * 307, SegmentCount(encoding="gsm7", segments=3, units=307)),
        # Extension characters count two septets: 159 + "€" is 161 septets, two parts.
        ("a" * 158 + "€", SegmentCount(encoding="gsm7", segments=1, units=160)),
        ("a" * 159 + "€", SegmentCount(encoding="gsm7", segments=2, units=161)),
        ("{}[]~|^\\\f€", SegmentCount(encoding="gsm7", segments=1, units=20)),
        # Accented letters of the basic table stay GSM-7; "ç" (lower case) is not in it.
        ("éèùìòÇÄÖÑÜäöñüà" * 10, SegmentCount(encoding="gsm7", segments=1, units=150)),
        ("ç", SegmentCount(encoding="ucs2", segments=1, units=1)),
        ("я" * 70, SegmentCount(encoding="ucs2", segments=1, units=70)),
        ("я" * 71, SegmentCount(encoding="ucs2", segments=2, units=71)),
        ("я" * 134, SegmentCount(encoding="ucs2", segments=2, units=134)),
        ("я" * 135, SegmentCount(encoding="ucs2", segments=3, units=135)),
        # One Cyrillic letter turns the whole Latin text into UCS-2.
        ("a" * 69 + "ж", SegmentCount(encoding="ucs2", segments=1, units=70)),
        ("a" * 70 + "ж", SegmentCount(encoding="ucs2", segments=2, units=71)),
        # Emoji outside the BMP are two UTF-16 units.
        ("😀" * 35, SegmentCount(encoding="ucs2", segments=1, units=70)),
        ("я" * 69 + "😀", SegmentCount(encoding="ucs2", segments=2, units=71)),
    ],
)
def test_count_segments(text: str, expected: SegmentCount) -> None:
    assert count_segments(text) == expected


def test_an_extension_character_at_a_part_boundary_moves_to_the_next_part() -> None:
    # 152 septets + "€" (2) would need 154 in part one: the ESC pair is never split, so "€" opens part two.
    text = "a" * 152 + "€" + "b" * 151
    encoding, parts = split_segments(text)
    assert encoding == "gsm7"
    assert parts == ["a" * 152, "€" + "b" * 151]
    assert count_segments(text) == SegmentCount(encoding="gsm7", segments=2, units=305)
    # 306 septets fit 2 × 153 by arithmetic, but the unsplittable pair leaves a hole: a third part.
    assert count_segments(text + "c") == SegmentCount(encoding="gsm7", segments=3, units=306)


def test_a_surrogate_pair_at_a_part_boundary_moves_to_the_next_part() -> None:
    text = "я" * 66 + "😀" + "я" * 66
    encoding, parts = split_segments(text)
    assert encoding == "ucs2"
    assert parts == ["я" * 66, "😀" + "я" * 65, "я"]
    assert count_segments(text) == SegmentCount(encoding="ucs2", segments=3, units=134)


def test_parts_reassemble_to_the_text() -> None:
    text = "Ваш звонок запланирован на 14:30. Мы перезвоним с номера +7 495 000-00-00. " * 4
    _, parts = split_segments(text)
    assert "".join(parts) == text
    assert all(len(part.encode("utf-16-le")) <= 134 for part in parts)
