"""Pure verification logic: policy table, deadlines and reminders, link tokens, SMS length, comparison."""

from __future__ import annotations

import datetime as dt

import pytest

from services.common.calendar import zone
from services.verification.domain.compare import Holder, compare, normalize_name
from services.verification.domain.deadlines import deadline_for, last_day, reminder_times
from services.verification.domain.links import TOKEN_CHARS, link_url, make_token, new_link_id, read_token
from services.verification.domain.policy import POLICIES, Policy, PolicyError, validate_policies
from services.verification.domain.texts import LINK_MAX_CHARS, SMS_MAX_CHARS, sms_text, spaced_mask
from services.verification.identity.base import PassportRecord, PersonRecord

HOLDER = Holder(
    last_name="Иванов",
    first_name="Иван",
    middle_name="Иванович",
    birth_date=dt.date(1985, 4, 12),
    passport_series="4510",
    passport_number="123456",
    passport_issue_date=dt.date(2010, 5, 20),
    passport_issuer_code="770-001",
)


def person(**changes: object) -> PersonRecord:
    values: dict[str, object] = {
        "subject_id": "1000000001",
        "last_name": "ИВАНОВ",
        "first_name": "Иван",
        "middle_name": "Иванович",
        "birth_date": dt.date(1985, 4, 12),
        "trusted": True,
        "documents": [
            PassportRecord(
                doc_type="RF_PASSPORT",
                series="45 10",
                number="123456",
                issue_date=dt.date(2010, 5, 20),
                issuer_code="770001",
            )
        ],
        "mobile_phones": ["+79161234567"],
    }
    values.update(changes)
    return PersonRecord(**values)  # type: ignore[arg-type]


def sign(message: bytes) -> bytes:
    import hashlib
    import hmac

    return hmac.new(b"k" * 32, message, hashlib.sha256).digest()


def test_policy_table_is_valid_and_cites_sources() -> None:
    policies = validate_policies()
    assert policies["regulator_request"].deadline_days == 15
    assert policies["regulator_request"].reminder_days == (7, 3, 1)
    assert all(p.legal_source for p in POLICIES)


@pytest.mark.parametrize(
    "broken",
    [
        (*POLICIES, POLICIES[0]),
        POLICIES[1:],
        (
            Policy(reason="regulator_request", deadline_days=5, reminder_days=(7,), legal_source="x"),
            *POLICIES[1:],
        ),
        (
            Policy(reason="regulator_request", deadline_days=15, reminder_days=(1,), legal_source=" "),
            *POLICIES[1:],
        ),
    ],
)
def test_inconsistent_policy_table_refuses_to_start(broken: tuple[Policy, ...]) -> None:
    with pytest.raises(PolicyError):
        validate_policies(broken)


def test_deadline_is_end_of_last_local_day_and_reminders_never_at_night() -> None:
    policy = validate_policies()["regulator_request"]
    tz = "Asia/Vladivostok"
    opened = dt.datetime(2026, 11, 29, 20, 0, tzinfo=dt.UTC)  # already 30 Nov 06:00 in Vladivostok
    deadline = deadline_for(policy, opened, tz)
    assert deadline.astimezone(zone(tz)) == dt.datetime(2026, 12, 16, 0, 0, tzinfo=zone(tz))
    assert last_day(deadline, tz) == dt.date(2026, 12, 15)
    times = reminder_times(policy.reminder_days, deadline, tz, opened)
    assert sorted(times) == [1, 3, 7]
    for at in times.values():
        local = at.astimezone(zone(tz))
        assert dt.time(9) <= local.time() < dt.time(21), local
    # A reminder already in the past is not planned.
    assert 7 not in reminder_times(policy.reminder_days, deadline, tz, deadline - dt.timedelta(days=5))


def test_link_token_is_short_signed_and_rejects_forgeries() -> None:
    raw = new_link_id()
    token = make_token(raw, sign)
    assert len(token) == TOKEN_CHARS
    assert read_token(token, sign) is not None
    flipped = ("A" if token[3] != "A" else "B").join([token[:3], token[4:]])
    assert read_token(flipped, sign) is None
    assert read_token(token + "x", sign) is None
    assert read_token("../../etc/pass", sign) is None
    assert read_token(token, lambda m: sign(m + b"other key")) is None


def test_sms_with_link_fits_two_ucs2_segments() -> None:
    link = link_url("https://mf.ru/v", make_token(new_link_id(), sign))
    assert len(link) <= LINK_MAX_CHARS
    for lang in ("ru", "en"):
        text = sms_text("МегаФон", dt.date(2026, 12, 14), link, lang)  # type: ignore[arg-type]
        assert link in text
        assert len(text) <= SMS_MAX_CHARS, (len(text), text)
        # UCS-2: every character is one 16-bit unit (no surrogate pairs).
        assert len(text.encode("utf-16-be")) == 2 * len(text)


def test_masked_number() -> None:
    assert spaced_mask("+79161234567") == "+7 916 ***-**-67"


def test_names_normalise_case_yo_hyphens_spaces_and_latin_lookalikes() -> None:
    assert normalize_name("Салтыков-Щедрин") == normalize_name("салтыков щедрин")
    assert normalize_name("Пётр") == normalize_name("ПЕТР")
    assert normalize_name("Cидоров") == normalize_name("Сидоров")  # Latin C
    assert normalize_name("Иванов") != normalize_name("Иванова")


def test_comparison_matches_and_names_differing_fields_only() -> None:
    assert compare(HOLDER, person(), msisdn="+79161234567").matched
    result = compare(HOLDER, person(last_name="Петров", birth_date=dt.date(1985, 4, 13)))
    assert result.fields == ["full_name", "birth_date"]
    wrong_number = person(
        documents=[
            PassportRecord(
                doc_type="RF_PASSPORT",
                series="4510",
                number="123457",
                issue_date=dt.date(2010, 5, 21),
                issuer_code="770-002",
            )
        ]
    )
    assert compare(HOLDER, wrong_number).fields == [
        "passport_number",
        "passport_issue_date",
        "passport_issuer_code",
    ]
    assert compare(HOLDER, person(documents=[PassportRecord(doc_type="FID_DOC")])).fields == ["document_type"]
    assert compare(HOLDER, person(mobile_phones=[]), msisdn="+79161234567").fields == ["msisdn"]
    assert "123456" not in repr(result)
