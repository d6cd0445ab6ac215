"""The sandbox's in-memory state, its ESIA error texts, and the helpers every endpoint group uses."""

from __future__ import annotations

import asyncio
import html
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import RSAKey
from litestar import Request, Response

ISSUER = "http://esia.gosuslugi.ru/"
TIMESTAMP_SKEW_S = 300  # how far the request timestamp may be from our clock before ESIA-007015
CODE_TTL_S = 300
TOKEN_TTL_S = 3600
# Faults a test or a person can inject: an ESIA error at a step, a slow answer, or a broken token.
FAULT_STEPS = ("ac", "te", "prns")
TOKEN_FAULTS = ("expired", "other_client", "tampered", "wrong_state", "garbage", "wrong_issuer")

ERROR_TEXT = {
    "ESIA-007002": "Несоответствие сертификата и мнемоники",
    "ESIA-007004": "Владелец ресурса отклонил запрос",
    "ESIA-007005": "Тип запроса не поддерживается",
    "ESIA-007007": "Внутренняя ошибка ЕСИА",
    "ESIA-007008": "Сервис временно недоступен",
    "ESIA-007011": "Неверный авторизационный код",
    "ESIA-007013": "Не указана область доступа",
    "ESIA-007014": "Не указан обязательный параметр",
    "ESIA-007015": "Неверное время запроса",
    "ESIA-007023": "Адрес перенаправления не зарегистрирован",
    "ESIA-007053": "Неверная подпись запроса (client_secret) или хэш сертификата",
    "ESIA-007055": "Вход в систему осуществляется с неподтвержденной учетной записью",
}
OAUTH_ERROR = {
    "ESIA-007004": "access_denied",
    "ESIA-007007": "server_error",
    "ESIA-007008": "temporarily_unavailable",
    "ESIA-007055": "access_denied",
}


@dataclass
class Fault:
    step: str
    error: str = ""  # an ESIA code, e.g. "ESIA-007007"
    delay_s: float = 0.0
    token: str = ""  # one of TOKEN_FAULTS (te step)
    times: int = 1  # how many requests it hits; then it is gone


@dataclass
class Authorization:
    client_id: str
    scope: str
    state: str
    redirect_uri: str
    oid: str = ""


@dataclass
class Grant:
    client_id: str
    scope: str
    redirect_uri: str
    oid: str
    expires_at: float


@dataclass
class SandboxState:
    """In memory on purpose: this is a stand-in with one process, restarted at will."""

    clients: dict[str, bytes]  # client_id -> certificate DER
    key: RSAKey
    issuer: str = ISSUER
    pending: dict[str, Authorization] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)  # what clients sent, for tests

    def take_fault(self, step: str) -> Fault | None:
        for fault in self.faults:
            if fault.step == step:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None


class EsiaRejection(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail or ERROR_TEXT.get(code, "")


def sandbox_of(request: Request[Any, Any, Any]) -> SandboxState:
    sandbox: SandboxState = request.app.state.sandbox
    return sandbox


def html_page(title: str, body: str, status_code: int = 200) -> Response[str]:
    document = (
        '<!doctype html><html lang="ru"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:1rem auto;padding:0 1rem}"
        "button{font-size:1rem;padding:.6rem 1rem;margin:.25rem 0;width:100%;text-align:left}"
        ".note{color:#555;font-size:.9rem}</style></head>"
        "<body><p class=note>Песочница ЕСИА · ESIA sandbox</p>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(document, status_code=status_code, media_type="text/html; charset=utf-8")


async def apply_delay(fault: Fault | None) -> None:
    if fault is not None and fault.delay_s > 0:
        await asyncio.sleep(fault.delay_s)


class RestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def rest_error(_: Request[Any, Any, Any], exc: RestError) -> Response[dict[str, str]]:
    return Response({"code": exc.code, "message": exc.message}, status_code=exc.status)
