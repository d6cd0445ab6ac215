"""The subscriber's pages (ru/en): what each link state and sign-in outcome says, rendered by jinja2."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from litestar import Response

from services.common.calendar import zone
from services.verification.domain.texts import Lang, day_month

# No script, no third-party anything; styles from our own file; the token in the URL never leaks to the
# IdP or anyone else through Referer.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

_templates = Environment(
    loader=PackageLoader("services.verification", "templates"), autoescape=select_autoescape()
)

REASONS: dict[Lang, dict[str, str]] = {
    "ru": {
        "regulator_request": "Роскомнадзор попросил нас проверить данные владельца этого номера.",
        "outdated_data": "Паспортные данные в вашем договоре устарели.",
        "used_by_other_person": "Похоже, номером пользуется не тот, на кого оформлен договор. По закону "
        "номер должен быть оформлен на того, кто им пользуется.",
        "corporate_sim": "Ваша организация указала, что этим корпоративным номером пользуетесь вы. По закону "
        "пользователь корпоративного номера подтверждает это через Госуслуги.",
    },
    "en": {
        "regulator_request": "The regulator (Roskomnadzor) asked us to check the data of this "
        "number's owner.",
        "outdated_data": "The passport data in your contract is out of date.",
        "used_by_other_person": "Someone other than the contract holder seems to use this number. The law "
        "requires a number to be registered to the person who uses it.",
        "corporate_sim": "Your organisation says that you use this corporate number. The law asks the user "
        "of a corporate number to confirm it through Gosuslugi.",
    },
}
FIELDS: dict[Lang, dict[str, str]] = {
    "ru": {
        "full_name": "ФИО",
        "birth_date": "дата рождения",
        "document_type": "паспорт РФ не найден",
        "passport_number": "серия и номер паспорта",
        "passport_issue_date": "дата выдачи паспорта",
        "passport_issuer_code": "код подразделения",
        "msisdn": "номер телефона",
    },
    "en": {
        "full_name": "full name",
        "birth_date": "date of birth",
        "document_type": "no Russian passport found",
        "passport_number": "passport series and number",
        "passport_issue_date": "passport issue date",
        "passport_issuer_code": "issuer code",
        "msisdn": "phone number",
    },
}


@dataclass(slots=True)
class Page:
    """One page: a heading, plain paragraphs, an optional main action and a language switch."""

    lang: Lang
    title: str
    paragraphs: list[str]
    action: tuple[str, str] | None = None  # (href, label)
    switch: tuple[str, str, str] | None = None  # (href, label, lang of the label)
    notice: str = ""  # one highlighted line (the deadline, a suspension)
    status: str = "info"  # info | ok | warn: only the styling of the heading's icon
    facts: list[tuple[str, str]] = field(default_factory=list)


def render(page: Page, status_code: int = 200, headers: dict[str, str] | None = None) -> Response[str]:
    html = _templates.get_template("page.html").render(page=page)
    return Response(
        html,
        status_code=status_code,
        media_type="text/html; charset=utf-8",
        headers={**PAGE_HEADERS, **(headers or {})},
    )


def pick_lang(requested: str | None, default: str) -> Lang:
    if requested in ("ru", "en"):
        return requested  # type: ignore[return-value]
    return "en" if default == "en" else "ru"


def _switch(path: str, lang: Lang) -> tuple[str, str, str]:
    return (f"{path}?lang=en", "English", "en") if lang == "ru" else (f"{path}?lang=ru", "Русский", "ru")


def local_deadline(deadline: dt.datetime, tz: str, lang: Lang) -> str:
    """ "23:59 14 декабря (Europe/Moscow)": the last minute of the last day, in the subscriber's zone."""
    last = (deadline.astimezone(zone(tz)) - dt.timedelta(minutes=1)).replace(second=0)
    when = f"{last:%H:%M}, {day_month(last.date(), lang)}"
    return f"{when} ({'по времени' if lang == 'ru' else 'time zone'} {tz})"


def active_page(
    *,
    lang: Lang,
    token: str,
    operator: str,
    msisdn: str,
    reason: str,
    deadline: dt.datetime,
    tz: str,
    suspended: bool,
) -> Page:
    ru = lang == "ru"
    when = local_deadline(deadline, tz, lang)
    if suspended:
        notice = (
            "Номер заблокирован, потому что данные не подтвердили вовремя. Подтвердите их — и номер снова "
            "заработает."
            if ru
            else "The number is suspended because the data was not confirmed in time. Confirm it and the "
            "number works again."
        )
    else:
        notice = f"Подтвердите до {when}." if ru else f"Please confirm by {when}."
    paragraphs = [
        (
            f"{operator} просит подтвердить паспортные данные владельца номера {msisdn}."
            if ru
            else f"{operator} asks you to confirm the passport data of the owner of {msisdn}."
        ),
        REASONS[lang].get(reason, ""),
        (
            "Нажмите кнопку, войдите на Госуслугах и разрешите передать ФИО, дату рождения и данные "
            "паспорта. Пароль от Госуслуг вводится только на их сайте — мы его не видим и никогда "
            "не спрашиваем."
            if ru
            else "Press the button, sign in on Gosuslugi and allow it to share your name, date of birth and "
            "passport data. You type your Gosuslugi password only on their site: we never see or ask for it."
        ),
        (
            f"Нет Госуслуг? Приходите в любой салон {operator} с паспортом — это бесплатно и займёт "
            "пару минут."
            if ru
            else f"No Gosuslugi account? Bring your passport to any {operator} store: it is free and takes a "
            "couple of minutes."
        ),
    ]
    if not suspended:
        paragraphs.append(
            f"Если ничего не делать, после {when} номер заблокируют: звонки, SMS и интернет перестанут "
            "работать. Номер вернётся, как только данные будут подтверждены."
            if ru
            else f"If you do nothing, after {when} the number is suspended: calls, texts and data stop "
            "working. It works again as soon as the data is confirmed."
        )
    return Page(
        lang=lang,
        title="Подтвердите паспортные данные" if ru else "Confirm your passport data",
        paragraphs=[p for p in paragraphs if p],
        notice=notice,
        status="warn" if suspended else "info",
        action=(
            f"/v/{token}/start?lang={lang}",
            "Подтвердить через Госуслуги" if ru else "Confirm via Gosuslugi",
        ),
        switch=_switch(f"/v/{token}", lang),
    )


def outcome_page(
    *, lang: Lang, token: str, outcome: str, operator: str, fields: list[str], restored: bool, can_retry: bool
) -> Page:
    ru = lang == "ru"
    retry = (
        (f"/v/{token}/start?lang={lang}", "Попробовать ещё раз" if ru else "Try again") if can_retry else None
    )
    office = (
        f"Или приходите в любой салон {operator} с паспортом."
        if ru
        else f"Or bring your passport to any {operator} store."
    )
    switch = _switch(f"/v/{token}/result", lang)
    if outcome == "confirmed":
        text = (
            ("Номер снова работает. " if restored else "") + "Спасибо! Больше ничего делать не нужно."
            if ru
            else ("Your number works again. " if restored else "") + "Thank you! There is nothing else to do."
        )
        return Page(
            lang=lang,
            title="Данные подтверждены" if ru else "Your data is confirmed",
            paragraphs=[text],
            status="ok",
            switch=switch,
        )
    if outcome == "mismatch":
        names = ", ".join(FIELDS[lang].get(f, f) for f in fields)
        return Page(
            lang=lang,
            title="Данные не совпали" if ru else "The data did not match",
            paragraphs=[
                (
                    f"Данные на Госуслугах отличаются от данных в договоре: {names}."
                    if ru
                    else f"Your Gosuslugi data differs from the contract: {names}."
                ),
                (
                    f"Приходите в любой салон {operator} с паспортом, чтобы обновить договор."
                    if ru
                    else f"Please bring your passport to any {operator} store to update the contract."
                ),
            ],
            status="warn",
            switch=switch,
        )
    if outcome == "consent_denied":
        return Page(
            lang=lang,
            title="Вы не дали согласие" if ru else "You did not give consent",
            paragraphs=[
                "Без вашего согласия Госуслуги не передают нам данные, и мы не можем их проверить."
                if ru
                else "Without your consent Gosuslugi does not share the data, so we cannot check it.",
                office,
            ],
            action=retry,
            status="warn",
            switch=switch,
        )
    if outcome == "account_not_confirmed":
        return Page(
            lang=lang,
            title="Учётная запись на Госуслугах не подтверждена"
            if ru
            else "Your Gosuslugi account is not confirmed",
            paragraphs=[
                "Проверить данные можно только через подтверждённую учётную запись. Подтвердите её в МФЦ, "
                "в отделении банка или онлайн в приложении банка, затем вернитесь по этой ссылке."
                if ru
                else "Only a confirmed account can share verified data. Confirm it at a public service "
                "centre (MFC), a bank branch or in your bank's app, then come back to this link.",
                office,
            ],
            action=retry,
            status="warn",
            switch=switch,
        )
    return Page(
        lang=lang,
        title="Не получилось проверить данные" if ru else "We could not check your data",
        paragraphs=[
            "Госуслуги не ответили как нужно. Это не ваша ошибка. Попробуйте ещё раз через несколько минут."
            if ru
            else "Gosuslugi did not answer as expected. It is not your fault. Please try again in a few "
            "minutes.",
            office,
        ],
        action=retry,
        status="warn",
        switch=switch,
    )


def refused_page(
    *, lang: Lang, kind: str, operator: str, token: str = "", outcome: str | None = None
) -> Page:
    """A link or sign-in that cannot continue: what happened and what to do, never an error page."""
    ru = lang == "ru"
    office = (
        f"Если сомневаетесь, приходите в любой салон {operator} с паспортом."
        if ru
        else f"If in doubt, bring your passport to any {operator} store."
    )
    if kind == "used":
        # Only a sign-in through this very link that confirmed the data may say so; a link spent some
        # other way (a newer link was sent, the case was decided elsewhere) says just that it is used.
        if outcome == "confirmed":
            text = (
                "Данные уже подтверждены, больше ничего делать не нужно."
                if ru
                else "Your data is already confirmed; there is nothing else to do."
            )
            paragraphs, status = [text], "ok"
        elif outcome == "mismatch":
            text = (
                "По этой ссылке уже вошли, и данные не совпали с договором."
                if ru
                else "Someone already signed in with this link and the data did not match the contract."
            )
            paragraphs, status = [text, office], "warn"
        else:
            text = (
                "Эта ссылка больше не действует. Если вам пришло новое сообщение со ссылкой, откройте её."
                if ru
                else "This link no longer works. If you got a newer message with a link, open that one."
            )
            paragraphs, status = [text, office], "info"
        return Page(
            lang=lang,
            title="Ссылка уже использована" if ru else "This link has already been used",
            paragraphs=paragraphs,
            status=status,
            switch=_switch(f"/v/{token}", lang) if token else None,
        )
    if kind == "expired":
        title, text = (
            ("Срок действия ссылки истёк", "Подтвердить данные теперь можно только в салоне с паспортом.")
            if ru
            else (
                "This link has expired",
                "You can now confirm your data only in a store, with your passport.",
            )
        )
        return Page(lang=lang, title=title, paragraphs=[text, office], status="warn")
    if kind == "cancelled":
        title, text = (
            (
                "Проверка отменена",
                "Мы больше не просим подтверждать данные по этой ссылке. Ничего делать не нужно.",
            )
            if ru
            else ("This check was cancelled", "We no longer ask you to confirm anything here. Nothing to do.")
        )
        return Page(lang=lang, title=title, paragraphs=[text], status="info")
    if kind in ("state_replayed", "state_expired", "state_unknown", "other_browser"):
        return Page(
            lang=lang,
            title="Вход не завершён" if ru else "The sign-in did not finish",
            paragraphs=[
                "Этот вход уже использован, устарел или начат в другом браузере. Откройте ссылку из SMS ещё "
                "раз и нажмите кнопку снова."
                if ru
                else "This sign-in was already used, is too old or was started in another browser. Open the "
                "link from the text message again and press the button again.",
                office,
            ],
            action=(f"/v/{token}?lang={lang}", "Открыть ссылку снова" if ru else "Open the link again")
            if token
            else None,
            status="warn",
        )
    # forged, mistyped or unknown
    return Page(
        lang=lang,
        title="Ссылка не работает" if ru else "This link does not work",
        paragraphs=[
            "Проверьте, что ссылка из SMS открыта целиком, без лишних символов. Ссылки для проверки данных "
            f"приходят только от {operator}."
            if ru
            else "Check that the whole link from the text message was opened, with nothing added. Links to "
            f"confirm your data come only from {operator}.",
            office,
        ],
        status="warn",
        switch=None,
    )


def context(page: Page) -> dict[str, Any]:
    return {"page": page}
