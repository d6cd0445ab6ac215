"""The policy table: per reason, how long the subscriber has and when they are reminded, with its source."""

from __future__ import annotations

from typing import Literal

import msgspec

# Reasons the back office opens cases for; "corporate_sim" cases are opened only by the corporate SIM API
# (an employee confirming that a company's number is theirs).
SubscriberReason = Literal["outdated_data", "used_by_other_person", "regulator_request"]
CaseReason = Literal["outdated_data", "used_by_other_person", "regulator_request", "corporate_sim"]
REASONS: tuple[CaseReason, ...] = (
    "outdated_data",
    "used_by_other_person",
    "regulator_request",
    "corporate_sim",
)


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """One row: the legal source is part of the data, so a reviewer sees why each number is what it is."""

    reason: CaseReason
    # Whole days after the day the case opens (in the subscriber's zone); the deadline is the end of the
    # last day, so "15 days" means the number works through the 15th day.
    deadline_days: int
    # Reminders this many days before the deadline (each moved out of the night in the subscriber's zone).
    reminder_days: tuple[int, ...]
    legal_source: str


# Deadlines change yearly (see shared/reference/verification.md §3); edit this table, not the code.
POLICIES: tuple[Policy, ...] = (
    Policy(
        reason="regulator_request",
        deadline_days=15,
        reminder_days=(7, 3, 1),
        legal_source="126-FZ «О связи» art. 44; RKN 2023 campaign: notify within 3 days, 15 days to update "
        "data, then the number is blocked (rg.ru 2023-08-07)",
    ),
    Policy(
        reason="used_by_other_person",
        deadline_days=14,
        reminder_days=(7, 3, 1),
        legal_source="41-FZ of 01.04.2025 (ban on transferring a SIM to third parties); 126-FZ art. 44: "
        "services only to subscribers with accurate data — about two weeks to re-register",
    ),
    Policy(
        reason="outdated_data",
        deadline_days=30,
        reminder_days=(14, 7, 3, 1),
        legal_source="126-FZ «О связи» art. 44 (from 1 Jun 2018): operators verify subscriber data through "
        "ESIA and suspend unverified numbers; operator's own term",
    ),
    Policy(
        reason="corporate_sim",
        deadline_days=15,
        reminder_days=(7, 3, 1),
        legal_source="533-FZ of 30.12.2020 and Decree 844 of 31.05.2021: the corporate SIM's user confirms "
        "the company's data in their own Gosuslugi account; operator's own term. Suspension follows the "
        "SIM's own registration deadline, not this case's",
    ),
)


class PolicyError(ValueError):
    """The policy table is inconsistent; the service refuses to start."""


def validate_policies(policies: tuple[Policy, ...] = POLICIES) -> dict[CaseReason, Policy]:
    """Every reason exactly once, positive deadlines, reminders inside them, each row citing a source."""
    by_reason: dict[CaseReason, Policy] = {}
    for policy in policies:
        if policy.reason in by_reason:
            raise PolicyError(f"policy for {policy.reason!r} is listed twice")
        if policy.deadline_days < 1:
            raise PolicyError(f"policy {policy.reason!r}: deadline_days must be at least 1")
        if any(not 0 < days < policy.deadline_days for days in policy.reminder_days):
            raise PolicyError(f"policy {policy.reason!r}: reminders must fall inside the deadline")
        if len(set(policy.reminder_days)) != len(policy.reminder_days):
            raise PolicyError(f"policy {policy.reason!r}: a reminder day is listed twice")
        if not policy.legal_source.strip():
            raise PolicyError(f"policy {policy.reason!r}: cite its legal source")
        by_reason[policy.reason] = policy
    missing = sorted(set(REASONS) - set(by_reason))
    if missing:
        raise PolicyError(f"no policy for reason(s) {', '.join(missing)}")
    return by_reason
