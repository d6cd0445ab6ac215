"""Device SIMs (M2M/IoT): equipment types, IMEI with its Luhn check, MAC addresses in common notations."""

from __future__ import annotations

import re
from typing import Literal, get_args

from services.common.domain_errors import Invalid

DeviceType = Literal[
    "modem",
    "router",
    "meter",
    "payment_terminal",
    "atm",
    "vending_machine",
    "alarm",
    "camera",
    "sensor",
    "tracker",
    "vehicle_telematics",
    "other_stationary",
    "other_mobile",
]
DEVICE_TYPES: tuple[DeviceType, ...] = get_args(DeviceType)
# Decree 844: stationary equipment is registered with its installation address; mobile equipment is not
# installed anywhere (the law names the subscriber's address, which the company's record already has).
MOBILE_TYPES: frozenset[DeviceType] = frozenset({"tracker", "vehicle_telematics", "other_mobile"})
STATIONARY_TYPES: frozenset[DeviceType] = frozenset(DEVICE_TYPES) - MOBILE_TYPES

IdKind = Literal["imei", "mac"]

_SEPARATORS = re.compile(r"[\s\-]")
_MAC_FORMS = (
    re.compile(
        r"^([0-9A-Fa-f]{2})([:-])([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2"
        r"([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})$"
    ),
    re.compile(r"^([0-9A-Fa-f]{4})\.([0-9A-Fa-f]{4})\.([0-9A-Fa-f]{4})$"),
    re.compile(r"^([0-9A-Fa-f]{12})$"),
)


def check_device_type(value: str, field: str = "device.type") -> DeviceType:
    if value not in DEVICE_TYPES:
        raise Invalid(
            "device_type_unknown",
            f"unknown device type {value[:40]!r}; one of: {', '.join(DEVICE_TYPES)}",
            field=field,
        )
    return value


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        d = int(char)
        if position % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def check_imei(value: str, field: str = "device.imei") -> str:
    """A 15-digit IMEI (spaces and hyphens allowed) whose last digit is the Luhn check digit."""
    imei = _SEPARATORS.sub("", value)
    if not imei.isascii() or not imei.isdigit():
        raise Invalid("imei_not_digits", "IMEI must consist of digits", field=field)
    if len(imei) != 15:
        raise Invalid("imei_length", f"IMEI must have 15 digits, got {len(imei)}", field=field)
    if not luhn_ok(imei):
        raise Invalid("imei_check_digit", "IMEI check digit (Luhn) does not match", field=field)
    return imei


def check_mac(value: str, field: str = "device.mac") -> str:
    """A unicast MAC as AA:BB:CC:DD:EE:FF, AA-BB-…, AABB.CCDD.EEFF or 12 hex digits → AA:BB:CC:DD:EE:FF."""
    text = value.strip()
    for form in _MAC_FORMS:
        match = form.match(text)
        if match:
            hex_digits = "".join(g for g in match.groups() if g not in (":", "-")).upper()
            break
    else:
        raise Invalid(
            "mac_format",
            "MAC must look like AA:BB:CC:DD:EE:FF, AA-BB-CC-DD-EE-FF or AABB.CCDD.EEFF",
            field=field,
        )
    if hex_digits == "0" * 12:
        raise Invalid("mac_zero", "MAC 00:00:00:00:00:00 names no device", field=field)
    if int(hex_digits[:2], 16) & 1:
        raise Invalid("mac_multicast", "a multicast or broadcast MAC names no single device", field=field)
    return ":".join(hex_digits[i : i + 2] for i in range(0, 12, 2))


def needs_address(device_type: DeviceType) -> bool:
    return device_type in STATIONARY_TYPES
