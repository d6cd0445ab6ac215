"""The routing table is validated at start-up; binding tokens are signed, channel-bound and expire."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

import pytest

from services.common.events import CallbackScheduled
from services.notifier.domain import binding
from services.notifier.routing import ROUTING_FILE, TEMPLATES_DIR, RoutingError, load_router, template_context

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def table_with(tmp_path: Path, old: str, new: str) -> Path:
    text = ROUTING_FILE.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "routing.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_the_shipped_table_loads_and_renders_every_template_in_both_languages() -> None:
    router = load_router(available_slots={"messenger", "sms"})
    assert "callback.failed.v1" in router.event_tags
    for name in router.templates:
        for lang in ("ru", "en"):
            assert router.render(name, lang, _worst_case_values()).text


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'template = "callback_missed"',
            'template = "callback_misssed"',
            "unknown template 'callback_misssed'",
        ),
        ('channels = ["messenger", "sms"]', 'channels = ["messenger", "fax"]', "unknown channel 'fax'"),
        ('event = "callback.failed.v1"', 'event = "callback.fail.v1"', "unknown event 'callback.fail.v1'"),
        ('deadline_field = "deadline"', 'deadline_field = "dead_line"', "has no field 'dead_line'"),
    ],
)
def test_a_wrong_table_stops_start_up_naming_the_route(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    with pytest.raises(RoutingError, match=message):
        load_router(table_with(tmp_path, old, new))


def test_a_route_needing_a_channel_nobody_configured_stops_start_up() -> None:
    with pytest.raises(RoutingError, match="no configured channel delivers 'sms'"):
        load_router(available_slots={"messenger"})


def test_a_template_missing_a_language_stops_start_up(tmp_path: Path) -> None:
    templates = tmp_path / "messages"
    shutil.copytree(TEMPLATES_DIR, templates)
    (templates / "callback_calling.v1.en.j2").unlink()
    with pytest.raises(RoutingError, match="'callback_calling' v1 has no en file"):
        load_router(ROUTING_FILE, templates)


def test_only_a_changed_time_of_callback_scheduled_is_routed() -> None:
    router = load_router()

    def scheduled(reason: str) -> CallbackScheduled:
        return CallbackScheduled(
            callback_id=uuid.uuid4(),
            site_key="s",
            state="scheduled",
            due_at=T0,
            promised_earliest=T0,
            promised_latest=T0,
            reason=reason,
        )

    assert router.routes_for(scheduled("queue")) == []
    assert [r.purpose for r in router.routes_for(scheduled("retry_after_busy"))] == ["callback_rescheduled"]
    context = template_context(scheduled("rescheduled"), "Asia/Vladivostok")
    assert context["due_at_local"] == "02.03 19:00"


def test_binding_tokens_are_signed_per_channel_and_expire() -> None:
    def sign(message: bytes) -> bytes:
        import hashlib
        import hmac

        return hmac.new(b"k" * 32, message, hashlib.sha256).digest()

    recipient = uuid.uuid4()
    token = binding.issue_token(sign, recipient, "telegram", T0 + dt.timedelta(hours=1))
    assert len(token) <= 64
    assert binding.read_token(sign, token, "telegram", T0) == recipient
    with pytest.raises(binding.BadToken, match="another channel"):
        binding.read_token(sign, token, "max", T0)
    with pytest.raises(binding.BadToken, match="expired"):
        binding.read_token(sign, token, "telegram", T0 + dt.timedelta(hours=2))
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(binding.BadToken):
        binding.read_token(sign, forged, "telegram", T0)
    assert binding.deep_link("telegram", "abonent_bot", token) == f"https://t.me/abonent_bot?start={token}"


def _worst_case_values() -> dict[str, object]:
    long_link = "https://verify.example.ru/v/" + "x" * 22
    return {
        "promised_earliest_local": "31.12 23:59",
        "promised_latest_time": "23:59",
        "due_at_local": "31.12 23:59",
        "rebook_url": long_link,
        "deadline_date": "31.12.2026",
        "deadline_last_day": "31.12.2026",
        "link": long_link,
        "days_left": 30,
    }


def test_a_deadline_at_local_midnight_is_announced_as_the_day_it_ends() -> None:
    import datetime as dt
    import uuid

    from services.common.events import VerificationReminderDue
    from services.notifier.routing import template_context

    # The verification service's deadline is the end of the subscriber's 14 December: midnight of the 15th.
    event = VerificationReminderDue(
        case_id=uuid.uuid4(),
        state="open",
        msisdn="+79161234567",
        deadline=dt.datetime(2026, 12, 14, 21, 0, tzinfo=dt.UTC),
        link="https://mf.ru/v/abc",
        days_left=3,
    )
    context = template_context(event, "Europe/Moscow")
    assert context["deadline_date"] == "15.12.2026"
    assert context["deadline_last_day"] == "14.12.2026"
