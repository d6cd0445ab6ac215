"""Pure corporate-SIM logic: INN/OGRN/OGRNIP control digits, IMEI and MAC, device types, the state machine."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import get_args

import pytest

from services.common.domain_errors import Invalid
from services.common.events import CorpSimState
from services.verification.corporate.domain.devices import (
    DEVICE_TYPES,
    check_device_type,
    check_imei,
    check_mac,
    luhn_ok,
    needs_address,
)
from services.verification.corporate.domain.ids import (
    check_company_ids,
    check_inn,
    check_ogrn,
    check_ogrnip,
)
from services.verification.corporate.domain.keys import KeyPlan, KeyTimes, plan_keys, published
from services.verification.corporate.domain.sim import (
    SIM_STATUSES,
    Action,
    SimStatus,
    TransitionRefused,
    transition,
)

# Published registry data of real companies (egrul.nalog.ru): Sberbank, Gazprom, Yandex.
REAL_COMPANIES = [
    ("7707083893", "1027700132195"),
    ("7736050003", "1027700070518"),
    ("7736207543", "1027700229193"),
]


@pytest.mark.parametrize(("inn", "ogrn"), REAL_COMPANIES)
def test_real_companies_pass(inn: str, ogrn: str) -> None:
    assert check_inn(inn) == inn
    assert check_ogrn(ogrn) == ogrn
    assert check_company_ids(f" {inn} ", ogrn) == (inn, ogrn, "legal_entity")


def test_entrepreneur_ids_pass() -> None:
    # The 12-digit INN and the OGRNIP from the tax service's published examples.
    assert check_inn("500100732259") == "500100732259"
    assert check_ogrnip("304500116000157") == "304500116000157"
    assert check_company_ids("500100732259", "304500116000157")[2] == "entrepreneur"


@pytest.mark.parametrize(
    ("check", "value", "code", "field"),
    [
        (check_inn, "7707083894", "inn_control_digit", "inn"),
        (check_inn, "500100732258", "inn_control_digit", "inn"),
        (check_inn, "500100732269", "inn_control_digit", "inn"),
        (check_inn, "77070838", "inn_length", "inn"),
        (check_inn, "77070838ab", "inn_not_digits", "inn"),
        (check_inn, "７７０７０８３８９３", "inn_not_digits", "inn"),  # full-width digits
        (check_ogrn, "1027700132196", "ogrn_control_digit", "ogrn"),
        (check_ogrn, "102770013219", "ogrn_length", "ogrn"),
        (check_ogrnip, "304500116000158", "ogrn_control_digit", "ogrn"),
        (check_ogrnip, "30450011600015", "ogrn_length", "ogrn"),
    ],
)
def test_bad_ids_name_field_and_reason(
    check: Callable[[str], str], value: str, code: str, field: str
) -> None:
    with pytest.raises(Invalid) as caught:
        check(value)
    assert caught.value.code == code
    assert caught.value.field == field


def test_inn_and_ogrn_kinds_must_agree() -> None:
    with pytest.raises(Invalid) as caught:
        check_company_ids("7707083893", "304500116000157")
    assert caught.value.code == "inn_ogrn_kind_mismatch"
    with pytest.raises(Invalid):
        check_company_ids("500100732259", "1027700132195")
    with pytest.raises(Invalid) as bad:
        check_company_ids("7707083893", "1027700132196")
    assert bad.value.field == "ogrn"


def test_imei() -> None:
    assert luhn_ok("79927398713")
    assert check_imei("49-015420-323751-8") == "490154203237518"
    for value, code in [
        ("490154203237519", "imei_check_digit"),
        ("49015420323751", "imei_length"),
        ("4901542032375180", "imei_length"),
        ("49015420323751x", "imei_not_digits"),
    ]:
        with pytest.raises(Invalid) as caught:
            check_imei(value)
        assert (caught.value.code, caught.value.field) == (code, "device.imei")


def test_mac() -> None:
    for value in ("00:1a:2b:3c:4d:5e", "00-1A-2B-3C-4D-5E", "001a.2b3c.4d5e", "001A2B3C4D5E"):
        assert check_mac(value) == "00:1A:2B:3C:4D:5E"
    for value, code in [
        ("00:1A:2B:3C:4D", "mac_format"),
        ("00:1A-2B:3C:4D:5E", "mac_format"),
        ("00:1A:2B:3C:4D:5G", "mac_format"),
        ("00:00:00:00:00:00", "mac_zero"),
        ("FF:FF:FF:FF:FF:FF", "mac_multicast"),
        ("01:00:5E:00:00:01", "mac_multicast"),
    ]:
        with pytest.raises(Invalid) as caught:
            check_mac(value)
        assert (caught.value.code, caught.value.field) == (code, "device.mac")


def test_device_types() -> None:
    assert check_device_type("meter") == "meter"
    assert needs_address("meter")
    assert not needs_address("tracker")
    assert len(DEVICE_TYPES) == len(set(DEVICE_TYPES))
    with pytest.raises(Invalid) as caught:
        check_device_type("toaster")
    assert (caught.value.code, caught.value.field) == ("device_type_unknown", "device.type")


def test_happy_paths() -> None:
    bound = transition("unregistered", None, "bind_employee")
    assert (bound.status, bound.binding, bound.event, bound.rebound) == (
        "pending_employee_confirmation",
        "employee",
        "bound",
        False,
    )
    confirmed = transition(bound.status, bound.binding, "employee_confirmed")
    assert (confirmed.status, confirmed.event) == ("pending_submission", "status_changed")
    submitted = transition(confirmed.status, confirmed.binding, "submit")
    assert submitted.status == "submitted"
    accepted = transition(submitted.status, submitted.binding, "accept")
    assert (accepted.status, accepted.binding) == ("accepted", "employee")
    rejected = transition("submitted", "device", "reject", reason="imei_unknown")
    assert (rejected.status, rejected.reason) == ("rejected", "imei_unknown")
    device = transition("unregistered", None, "bind_device")
    assert (device.status, device.binding) == ("pending_submission", "device")


def test_employee_mismatch_rejects_with_reason() -> None:
    outcome = transition("pending_employee_confirmation", "employee", "employee_mismatch", reason="full_name")
    assert (outcome.status, outcome.reason) == ("rejected", "full_name")


@pytest.mark.parametrize("status", [s for s in SIM_STATUSES if s != "unregistered"])
def test_bound_sims_unbind_and_rebind(status: SimStatus) -> None:
    binding = "device"
    unbound = transition(status, binding, "unbind")
    assert (unbound.status, unbound.binding, unbound.event) == ("unregistered", None, "unbound")
    rebound = transition(status, binding, "rebind_employee")
    assert (rebound.status, rebound.event, rebound.rebound) == (
        "pending_employee_confirmation",
        "bound",
        True,
    )
    with pytest.raises(TransitionRefused) as caught:
        transition(status, binding, "bind_device")
    assert caught.value.code == "sim_already_bound"


@pytest.mark.parametrize(
    ("status", "action", "code"),
    [
        ("unregistered", "unbind", "sim_not_bound"),
        ("unregistered", "rebind_device", "sim_not_bound"),
        ("unregistered", "submit", "sim_not_ready_for_submission"),
        ("pending_employee_confirmation", "submit", "sim_not_ready_for_submission"),
        ("pending_submission", "accept", "sim_not_submitted"),
        ("accepted", "reject", "sim_not_submitted"),
        ("pending_submission", "employee_confirmed", "sim_not_awaiting_employee"),
    ],
)
def test_refused(status: SimStatus, action: Action, code: str) -> None:
    with pytest.raises(TransitionRefused) as caught:
        transition(status, "employee", action, reason="x")
    assert caught.value.code == code
    assert caught.value.kind == "conflict"


def test_reject_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        transition("submitted", "device", "reject")


def test_employee_who_never_confirms_is_rejected() -> None:
    outcome = transition("pending_employee_confirmation", "employee", "employee_expired")
    assert (outcome.status, outcome.reason) == ("rejected", "employee_not_confirmed")


def test_state_names_match_the_event_catalogue() -> None:
    assert get_args(CorpSimState) == SIM_STATUSES


T0 = dt.datetime(2026, 11, 30, 7, 0, tzinfo=dt.UTC)
ROTATION, LEAD, KEEP = dt.timedelta(days=30), dt.timedelta(minutes=6), dt.timedelta(minutes=10, seconds=30)


def plan(keys: list[KeyTimes], now: dt.datetime) -> KeyPlan:
    return plan_keys(keys, now, rotation=ROTATION, lead=LEAD, keep_after_retire=KEEP)


def test_key_plan_first_key_signs_at_once() -> None:
    first = plan([], T0)
    assert (first.signer, first.create, first.create_not_before) == (None, "active", T0)


def test_key_plan_publishes_the_next_key_before_it_signs_then_retires_the_old() -> None:
    old = KeyTimes(kid="old", created_at=T0, not_before=T0)
    assert not plan([old], T0 + ROTATION - LEAD - dt.timedelta(seconds=1)).changes
    due = plan([old], T0 + ROTATION - LEAD)
    assert (due.signer, due.create, due.create_not_before) == ("old", "pending", T0 + ROTATION)
    new = KeyTimes(kid="new", created_at=T0 + ROTATION - LEAD, not_before=T0 + ROTATION)
    assert plan([old, new], T0 + ROTATION - dt.timedelta(seconds=1)).signer == "old"
    switched = plan([old, new], T0 + ROTATION)
    assert (switched.signer, switched.retire, switched.create) == ("new", ("old",), None)
    retired = KeyTimes(kid="old", created_at=T0, not_before=T0, retired_at=T0 + ROTATION)
    assert published([retired, new], T0 + ROTATION + KEEP - dt.timedelta(seconds=1), KEEP) == ["old", "new"]
    assert published([retired, new], T0 + ROTATION + KEEP, KEEP) == ["new"]
    assert plan([retired, new], T0 + ROTATION + KEEP).drop_retired_before == T0 + ROTATION


def test_key_plan_a_late_rotation_still_gives_the_lead() -> None:
    old = KeyTimes(kid="old", created_at=T0, not_before=T0)
    late = plan([old], T0 + 2 * ROTATION)
    assert (late.signer, late.create_not_before) == ("old", T0 + 2 * ROTATION + LEAD)
