/* Abonent "call me back" widget, v1.
 *
 *   <script src="https://HOST/widget/v1/widget.js" data-site-key="KEY" async></script>
 *   optional: data-lang="ru|en", data-api="https://HOST" (default: this script's origin)
 *
 * No framework, no dependencies. Everything lives in a shadow root; styles come from a constructable
 * stylesheet, and the code never writes style attributes, so it runs under a strict CSP
 * (script-src/style-src 'self' + the widget's host, no 'unsafe-inline', no eval). __ABONENT_CSS__ is
 * replaced with widget.css (as a JS string) when the service builds this file.
 */
(() => {
  'use strict';
  if (window.Abonent) return; // the tag was included twice

  const script = document.currentScript || document.querySelector('script[data-site-key]');
  const siteKey = script && script.dataset.siteKey;
  if (!siteKey) {
    console.warn('Abonent: data-site-key is missing on the widget script tag');
    return;
  }
  const api = (script.dataset.api || new URL(script.src, location.href).origin).replace(/\/+$/, '');
  const lang = /^ru/i.test(script.dataset.lang || document.documentElement.lang || navigator.language || '')
    ? 'ru' : 'en';
  let tz = 'UTC';
  try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone || tz; } catch (_) { /* very old engine */ }
  const CSS = __ABONENT_CSS__;
  const STORE_KEY = `abonent:${siteKey}`;
  const ACTIVE = ['requested', 'scheduled', 'dialing', 'connected'];

  // ---- strings -------------------------------------------------------------------------------------
  const I18N = {
    en: {
      button: 'Call me back', active: 'Your callback', title: "We'll call you back", close: 'Close',
      phone: 'Your phone number', when: 'When should we call?', asap: 'As soon as possible',
      later: 'At a time that suits me', slot: 'Time', notBefore: 'Not before', submit: 'Call me back',
      sending: 'Sending…', loading: 'Checking when we can call…',
      noPromise: "We can't promise a call in the next two weeks. Please try again later.",
      at: "We'll call you {0}", dayAt: '{0} at {1}', between: "We'll call you {0} between {1} and {2}",
      within: "We'll call you within {0}",
      anyMoment: "We'll call you any moment now", dialing: 'Calling you now', attempt: 'Attempt {0} of {1}',
      connected: 'Connected', completed: 'Thank you for the call!', missed: "We couldn't reach you",
      failed: 'We missed you — choose another time', expired: "We couldn't call in time — choose another time",
      cancelled: 'Callback cancelled', retry: '{0} more {1}', lastBy: 'the last by {0}',
      tries: { one: 'try', other: 'tries' },
      next: 'Next try in {0}', cancel: 'Cancel the call', again: 'Request another call',
      reschedule: 'Call me at this time',
      keep: 'Keep your phone nearby', pickUp: 'Please pick up: it is us calling', errPhone: 'Enter the full phone number', errInvalid: "This doesn't look like a valid phone number",
      errCountry: "We don't call numbers in this country", country: 'Country',
      errType: 'We can only call mobile and landline numbers', errConsent: 'Please tick the box to continue',
      errSlot: 'This time is no longer available, please choose another',
      errRate: 'Too many requests, try again {0}', errRateLater: 'Too many requests, please try again later',
      errOffline: 'You seem to be offline. Check your connection and try again',
      errDown: 'Our service is unavailable right now, please try again shortly',
      errBot: "Sorry, we couldn't accept the request. Please try again",
      errForm: 'Please check the form and try again', errGone: 'This callback request is no longer available',
      errStale: 'The form was out of date and has been refreshed. Please send it again',
      errHours: "We can't call you at these hours, please choose another time",
    },
    ru: {
      button: 'Перезвоните мне', active: 'Ваш звонок', title: 'Перезвоним вам', close: 'Закрыть',
      phone: 'Ваш номер телефона', when: 'Когда позвонить?', asap: 'Как можно скорее',
      later: 'В удобное время', slot: 'Время', notBefore: 'Не раньше', submit: 'Перезвоните мне',
      sending: 'Отправляем…', loading: 'Проверяем, когда сможем позвонить…',
      noPromise: 'В ближайшие две недели позвонить не сможем. Попробуйте позже.',
      at: 'Перезвоним {0}', dayAt: '{0} в {1}', between: 'Перезвоним {0} с {1} до {2}',
      within: 'Перезвоним в течение {0}',
      anyMoment: 'Перезвоним с минуты на минуту', dialing: 'Звоним вам', attempt: 'Попытка {0} из {1}',
      connected: 'Соединили', completed: 'Спасибо за разговор!', missed: 'Не дозвонились',
      failed: 'Не дозвонились — выберите другое время', expired: 'Не успели позвонить — выберите другое время',
      cancelled: 'Звонок отменён', retry: 'Ещё {0} {1}', lastBy: 'последняя — до {0}',
      tries: { one: 'попытка', few: 'попытки', many: 'попыток', other: 'попытки' },
      next: 'Следующая попытка через {0}', cancel: 'Отменить звонок', again: 'Заказать новый звонок',
      reschedule: 'Позвоните в это время',
      keep: 'Держите телефон под рукой', pickUp: 'Возьмите трубку — это мы', errPhone: 'Введите номер полностью', errInvalid: 'Похоже, номер набран с ошибкой',
      errCountry: 'Мы не звоним на номера этой страны', country: 'Страна',
      errType: 'Мы звоним только на мобильные и городские номера',
      errConsent: 'Чтобы продолжить, отметьте согласие',
      errSlot: 'Это время уже занято, выберите другое',
      errRate: 'Слишком много запросов, попробуйте {0}', errRateLater: 'Слишком много запросов, попробуйте позже',
      errOffline: 'Похоже, нет интернета. Проверьте соединение и попробуйте ещё раз',
      errDown: 'Сервис сейчас недоступен, попробуйте чуть позже',
      errBot: 'Не удалось принять заявку. Попробуйте ещё раз',
      errForm: 'Проверьте форму и попробуйте ещё раз', errGone: 'Эта заявка больше недоступна',
      errStale: 'Форма устарела, мы её обновили. Отправьте, пожалуйста, ещё раз',
      errHours: 'В эти часы позвонить не сможем, выберите другое время',
    },
  };
  let t = I18N[lang];
  const fmt = (s, ...a) => s.replace(/\{(\d)\}/g, (_, i) => a[i]);
  const rtf = new Intl.RelativeTimeFormat(lang, { numeric: 'auto' });
  const plural = new Intl.PluralRules(lang);

  // ---- tiny DOM helpers (createElement only: no innerHTML, no style attributes) ---------------------
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    el.append(...kids.flat().filter((k) => k != null && k !== false));
    return el;
  }
  function icon(d) {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    const path = document.createElementNS(ns, 'path');
    path.setAttribute('d', d);
    svg.append(path);
    return svg;
  }
  const PHONE_ICON = 'M6.6 10.8a15.1 15.1 0 0 0 6.6 6.6l2.2-2.2c.3-.3.7-.4 1-.2 1.1.4 2.3.6 3.6.6.6 0 1 .4 1 1V20c0 .6-.4 1-1 1A17 17 0 0 1 3 4c0-.6.4-1 1-1h3.5c.6 0 1 .4 1 1 0 1.3.2 2.5.6 3.6.1.3 0 .7-.2 1z';
  const CLOCK_ICON = 'M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm1 10.4 3.5 2.1-.8 1.3L11 13V7h2z';
  const show = (el, on) => { el.hidden = !on; };

  // ---- storage (may throw in sandboxed frames or with storage disabled) -----------------------------
  const store = {
    get(area, key) { try { return window[area].getItem(key); } catch (_) { return null; } },
    set(area, key, v) { try { v == null ? window[area].removeItem(key) : window[area].setItem(key, v); } catch (_) { /* ignore */ } },
  };
  function uuid() {
    // crypto.randomUUID needs a secure context; getRandomValues works everywhere.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
    return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
  }
  function visitorId() {
    let id = store.get('localStorage', 'abonent_vid');
    if (!id) store.set('localStorage', 'abonent_vid', (id = `v-${uuid()}`));
    return id;
  }

  // ---- HTTP ----------------------------------------------------------------------------------------
  // Errors carry {status, code, field, retryAfter}; code 'offline' = the request never got an answer.
  // `cache` is fetch's cache mode: offers are revalidated by ETag ('no-cache'), or fetched anew ('reload').
  async function request(method, path, body, headers, cache) {
    const fail = (status, code, field, retryAfter, text) => Object.assign(new Error(code), { status, code, field, retryAfter, text });
    if (navigator.onLine === false) throw fail(0, 'offline');
    let res;
    try {
      res = await fetch(api + path, {
        method,
        mode: 'cors',
        credentials: 'omit', // no cookies, first- or third-party
        headers: { ...(body ? { 'Content-Type': 'application/json' } : {}), ...headers },
        body: body ? JSON.stringify(body) : undefined,
        cache: cache || 'default',
        signal: AbortSignal.timeout ? AbortSignal.timeout(15000) : undefined,
      });
    } catch (e) {
      throw fail(0, e && e.name === 'TimeoutError' ? 'unavailable' : 'offline');
    }
    learnClock(res);
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty or not JSON */ }
    if (res.ok) return data;
    const err = (data && data.error) || {};
    const code = res.status === 429 ? 'rate_limited' : res.status >= 500 ? 'unavailable' : err.code || 'error';
    throw fail(res.status, code, err.field, parseInt(res.headers.get('Retry-After'), 10) || 0, err.message);
  }

  // The countdown compares the server's promise with this device's clock; when the server's Date header
  // is readable (same origin or exposed by CORS) correct for a device clock that is off by seconds+.
  let skew = 0;
  function learnClock(res) {
    const d = Date.parse(res.headers.get('Date') || '');
    if (d && Math.abs(d - Date.now()) > 2000) skew = d - Date.now();
  }
  const now = () => Date.now() + skew;

  function errorText(e) {
    switch (e.code) {
      case 'offline': return t.errOffline;
      case 'unavailable': return t.errDown;
      case 'rate_limited': return e.retryAfter ? fmt(t.errRate, inTime(e.retryAfter)) : t.errRateLater;
      case 'invalid_phone': return t.errInvalid;
      case 'unsupported_country': return e.text || t.errCountry; // "We don't call numbers in Germany"
      case 'number_type_not_allowed': return t.errType;
      case 'consent_required': return t.errConsent;
      case 'invalid_slot': case 'slot_full': return t.errSlot;
      case 'bot_suspected': case 'pow_required': return t.errBot;
      case 'no_callable_time': return t.errHours;
      case 'callback_not_found': return t.errGone;
      default: return e.field === 'form_token' ? t.errStale : t.errForm;
    }
  }
  function inTime(seconds) {
    if (seconds < 60) return rtf.format(seconds, 'second');
    if (seconds < 3600) return rtf.format(Math.ceil(seconds / 60), 'minute');
    return rtf.format(Math.ceil(seconds / 3600), 'hour');
  }

  // ---- time formatting (visitor's own time zone, which is what Date uses) --------------------------
  const hm = (d) => new Date(d).toLocaleTimeString(lang, { hour: '2-digit', minute: '2-digit', hour12: false });
  function dayOf(iso) { // "today", "tomorrow", "Mon, 24 Nov"
    const d = new Date(iso);
    const midnight = (x) => new Date(x).setHours(0, 0, 0, 0);
    const days = Math.round((midnight(d) - midnight(now())) / 864e5);
    return days === 0 || days === 1
      ? rtf.format(days, 'day')
      : d.toLocaleDateString(lang, { weekday: 'short', day: 'numeric', month: 'short' });
  }
  const dayAt = (iso) => fmt(t.dayAt, dayOf(iso), hm(iso));
  function clock(ms) {
    const s = Math.max(0, Math.ceil(ms / 1000));
    const pad = (n) => String(n).padStart(2, '0');
    const hours = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    return hours ? `${hours}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
  }

  // ---- phone ---------------------------------------------------------------------------------------
  // A number keeps the country the visitor typed or pasted: "+49 30 12345678" stays German (and the server
  // refuses it by name where the site does not call Germany). Without "+", digits are a national number of
  // the picked country. Only the +7 zone (RU, KZ) gets the "+7 (912) 345-67-89" mask, where a leading 8
  // means +7. The server has the real rules (libphonenumber); this only helps people type.
  let config = { allowed_countries: ['RU'], default_country: 'RU', countries: [], fields: {}, consent: {}, theme: {}, texts: {} };
  let country = 'RU';
  const digitsOf = (s) => s.replace(/\D/g, '');
  const intlOf = (s) => /^\s*\+/.test(s);
  function codeOf(c) {
    const found = config.countries.find((x) => x.code === c);
    return found ? String(found.calling_code) : c === 'RU' || c === 'KZ' ? '7' : '';
  }
  // The allowed country whose calling code starts these digits (the longest code wins; +76/+77 is KZ).
  function countryOfDigits(d) {
    const hits = config.countries.filter((c) => d.startsWith(String(c.calling_code)))
      .sort((a, b) => String(b.calling_code).length - String(a.calling_code).length);
    const seven = /^7[67]/.test(d) ? 'KZ' : 'RU';
    return (hits.find((c) => c.calling_code !== 7 || c.code === seven) || hits[0] || {}).code;
  }
  const sevenZone = (raw) => (intlOf(raw) ? digitsOf(raw)[0] === '7' : codeOf(country) === '7');

  function formatPhone(raw) {
    let d = digitsOf(raw);
    const intl = intlOf(raw);
    if (!d) return intl ? '+' : '';
    if (!sevenZone(raw)) {
      // As typed: digits and the usual separators, "+" only in front, at most 15 digits.
      let n = 0;
      return (intl ? '+' : '') + raw.replace(/[^\d\s().-]/g, '').replace(/\d/g, (x) => (++n > 15 ? '' : x)).trimStart();
    }
    d = (intl || d[0] === '7' ? d : d[0] === '8' ? '7' + d.slice(1) : '7' + d).slice(0, 11);
    let s = '+7';
    if (d.length > 1) s += ` (${d.slice(1, 4)}`;
    if (d.length > 4) s += `) ${d.slice(4, 7)}`;
    if (d.length > 7) s += `-${d.slice(7, 9)}`;
    if (d.length > 9) s += `-${d.slice(9, 11)}`;
    return s;
  }
  function phoneProblem(value) {
    const d = digitsOf(value);
    if (/^\+7/.test(value)) return d.length === 11 ? null : t.errPhone;
    return d.length >= (intlOf(value) ? 8 : 6) && d.length <= 15 ? null : t.errPhone;
  }
  // What the server gets: always international, so it never has to guess the country.
  function phoneToSend(value) {
    const code = codeOf(country);
    return intlOf(value) ? `+${digitsOf(value)}` : code ? `+${code}${digitsOf(value)}` : digitsOf(value);
  }
  function setCountry(c) {
    country = c;
    if (picker) picker.value = c;
    phoneIn.placeholder = codeOf(c) === '7' ? '+7 (___) ___-__-__' : `+${codeOf(c)}`;
  }
  // A country picked from the list replaces the calling code of an international number.
  function onPick() {
    const v = phoneIn.value;
    const old = codeOf(country);
    setCountry(picker.value);
    let rest = v;
    if (intlOf(v)) {
      // Skip the old code's digits, keep the rest as the visitor wrote it.
      let i = 0;
      for (let n = 0; n < old.length && i < v.length;) if (/\d/.test(v[i++])) n++;
      rest = `+${codeOf(country)} ${digitsOf(v).startsWith(old) ? v.slice(i).trim() : ''}`;
    }
    phoneIn.value = lastPhone = formatPhone(rest);
    fieldError(phoneIn, null);
    phoneIn.focus();
  }
  let lastPhone = '';
  function onPhoneInput(e) {
    const el = e.target;
    let raw = el.value;
    const pos = el.selectionStart == null ? raw.length : el.selectionStart;
    const atEnd = pos >= raw.length;
    let k = digitsOf(raw.slice(0, pos)).length;
    // Backspace over a mask character ("-", ")") would be undone by reformatting: delete the digit before it.
    if (e.inputType === 'deleteContentBackward' && digitsOf(raw) === digitsOf(lastPhone) && k > 0) {
      let seen = 0;
      raw = [...raw].filter((c) => !(/\d/.test(c) && ++seen === k)).join('');
      k -= 1;
    }
    const out = formatPhone(raw);
    k += Math.max(0, digitsOf(out).length - digitsOf(raw).length); // a "7" we prepended
    el.value = lastPhone = out;
    const typed = intlOf(out) && countryOfDigits(digitsOf(out));
    if (typed && typed !== country) setCountry(typed);
    if (!atEnd) {
      let i = 0;
      for (let seen = 0; i < out.length && seen < k; i++) if (/\d/.test(out[i])) seen++;
      el.setSelectionRange(i, i);
    }
    fieldError(el, null);
  }

  // ---- proof of work -------------------------------------------------------------------------------
  // SHA-256 in JS for pages served over plain http, where crypto.subtle does not exist.
  const K = [];
  const H0 = [];
  for (let n = 2, i = 0; i < 64; n++) {
    let prime = true;
    for (let f = 2; f * f <= n; f++) if (n % f === 0) prime = false;
    if (!prime) continue;
    if (i < 8) H0[i] = ((n ** 0.5 % 1) * 2 ** 32) | 0;
    K[i++] = ((n ** (1 / 3) % 1) * 2 ** 32) | 0;
  }
  const ror = (x, n) => (x >>> n) | (x << (32 - n));
  function sha256(bytes) {
    const len = bytes.length;
    const w = new Uint32Array((((len + 8) >> 6) + 1) * 16);
    for (let i = 0; i < len; i++) w[i >> 2] |= bytes[i] << (24 - (i & 3) * 8);
    w[len >> 2] |= 0x80 << (24 - (len & 3) * 8);
    w[w.length - 1] = len * 8;
    const hv = Uint32Array.from(H0);
    const m = new Uint32Array(64);
    for (let b = 0; b < w.length; b += 16) {
      for (let i = 0; i < 64; i++) {
        if (i < 16) m[i] = w[b + i];
        else {
          const x = m[i - 15];
          const y = m[i - 2];
          m[i] = (ror(x, 7) ^ ror(x, 18) ^ (x >>> 3)) + (ror(y, 17) ^ ror(y, 19) ^ (y >>> 10)) + m[i - 7] + m[i - 16];
        }
      }
      let [a, bb, c, d, e, f, g, hh] = hv;
      for (let i = 0; i < 64; i++) {
        const t1 = (hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + m[i]) | 0;
        const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c))) | 0;
        hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = bb; bb = a; a = (t1 + t2) | 0;
      }
      [a, bb, c, d, e, f, g, hh].forEach((v, i) => { hv[i] += v; });
    }
    const out = new Uint8Array(32);
    hv.forEach((v, i) => { out[i * 4] = v >>> 24; out[i * 4 + 1] = v >>> 16; out[i * 4 + 2] = v >>> 8; out[i * 4 + 3] = v; });
    return out;
  }
  function zeroBits(hash) {
    let z = 0;
    for (const byte of new Uint8Array(hash)) {
      if (byte) return z + Math.clz32(byte) - 24;
      z += 8;
    }
    return z;
  }
  // Find a nonce with sha256(token + ":" + nonce) starting with `bits` zero bits, in batches of 256 so
  // the page stays responsive. Starts when the offer arrives, so it is usually done before submit.
  async function solvePow(token, bits) {
    const subtle = window.crypto && crypto.subtle;
    const enc = new TextEncoder();
    for (let n = 0; ; n += 256) {
      const batch = [];
      for (let i = n; i < n + 256; i++) {
        const data = enc.encode(`${token}:${i}`);
        batch.push(subtle ? subtle.digest('SHA-256', data) : sha256(data));
      }
      const hashes = await Promise.all(batch);
      const hit = hashes.findIndex((x) => zeroBits(x) >= bits);
      if (hit >= 0) return String(n + hit);
      if (!subtle) await new Promise((r) => setTimeout(r, 0));
    }
  }

  // ---- UI ------------------------------------------------------------------------------------------
  let host, shadow, root, fab, backdrop, dialog, title, formView, statusView, live;
  let promiseText, phoneIn, picker, phoneErr, consentBox, consentIn, consentText, consentErr, hpIn, submitBtn, formAlert;
  let statusLine, detailLine, reschedBox, reschedBtn, cancelBtn, againBtn, statusAlert;
  let formWhen, reschedWhen, themeSheet;
  let isOpen = false;
  let offer = null; // {data, at, pow: Promise<string|null>}
  let current = null; // {id, token}
  let view = null; // last status view from the server

  // The offer's ranges of back-to-back slots, one by one: [{start, end}] as ISO instants.
  function slotList(data) {
    const step = (data.slot_minutes || 30) * 6e4;
    const list = [];
    for (const r of data.slot_ranges || []) {
      const end = Date.parse(r.end);
      for (let s = Date.parse(r.start); s + step <= end; s += step) {
        list.push({ start: new Date(s).toISOString(), end: new Date(s + step).toISOString() });
      }
    }
    return list;
  }

  // "When should we call" block, used by the form and by reschedule after a missed call.
  function whenPicker(p, onChange) {
    const radio = (value, text, checked) => h('label', { class: 'opt' },
      h('input', { type: 'radio', name: `${p}when`, value, checked, onchange: sync }), text);
    const asap = radio('asap', t.asap, true);
    const later = radio('slot', t.later, false);
    const select = h('select', { id: `${p}slot`, class: 'in', onchange: sync });
    const slotField = h('div', { class: 'field', hidden: true }, h('label', { for: `${p}slot` }, t.slot), select);
    const nb = h('input', { id: `${p}nb`, class: 'in', type: 'time', step: 900, onchange: () => onChange(true) });
    const nbField = h('div', { class: 'field', hidden: true }, h('label', { for: `${p}nb` }, t.notBefore), nb);
    const modes = h('fieldset', { class: 'when', hidden: true }, h('legend', {}, t.when), asap, later);
    let slots = [];
    function sync() {
      const slot = later.firstChild.checked && slots.length > 0;
      show(slotField, slot);
      show(nbField, !slot && config.fields.not_before !== false);
      onChange(false);
    }
    return {
      el: h('div', {}, modes, slotField, nbField),
      fill(data) {
        slots = (config.fields.slot_picker !== false && data && slotList(data)) || [];
        const keep = select.value;
        select.replaceChildren(...slots.map((s) => h('option', { value: s.start }, dayAt(s.start))));
        if (slots.some((s) => s.start === keep)) select.value = keep;
        show(modes, slots.length > 0);
        if (!slots.length) asap.firstChild.checked = true;
        sync();
      },
      // The chosen slot {start, end, label}, or null for "as soon as possible".
      slot: () => (later.firstChild.checked && slots.find((s) => s.start === select.value)) || null,
      notBefore: () => (!nbField.hidden && nb.value) || null,
      set(slot, notBefore) {
        later.firstChild.checked = !!slot;
        asap.firstChild.checked = !slot;
        if (slot) select.value = slot.start;
        nb.value = notBefore || '';
        sync();
      },
    };
  }

  function mount() {
    host = h('abonent-widget', { 'data-site-key': siteKey });
    shadow = host.attachShadow({ mode: 'open' });
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    themeSheet = new CSSStyleSheet();
    shadow.adoptedStyleSheets = [sheet, themeSheet];

    fab = h('button', { type: 'button', class: 'fab', 'aria-haspopup': 'dialog', 'aria-expanded': 'false', hidden: true, onclick: open },
      icon(PHONE_ICON), h('span', {}, t.button));
    backdrop = h('div', { class: 'backdrop', hidden: true, onclick: close });

    promiseText = h('span', {}, t.loading);
    phoneIn = h('input', {
      id: 'ab-phone', class: 'in', type: 'tel', name: 'phone', inputmode: 'tel', autocomplete: 'tel',
      required: true, 'aria-required': 'true', oninput: onPhoneInput,
    });
    phoneErr = h('p', { id: 'ab-phone-err', class: 'err', 'aria-live': 'assertive' });
    // A country picker only where the site calls several countries.
    picker = config.countries.length > 1
      ? h('select', { id: 'ab-cc', class: 'in cc', 'aria-label': t.country, onchange: onPick },
        config.countries.map((c) => h('option', { value: c.code }, `+${c.calling_code} ${c.name}`)))
      : null;
    formWhen = whenPicker('ab-f-', (nbChanged) => { renderPromise(); if (nbChanged) refreshPromise(); });
    consentIn = h('input', { type: 'checkbox', id: 'ab-consent', onchange: () => fieldError(consentIn, null) });
    consentText = h('span', {});
    consentErr = h('p', { id: 'ab-consent-err', class: 'err', 'aria-live': 'assertive' });
    consentBox = h('div', { hidden: true }, h('label', { class: 'check' }, consentIn, consentText), consentErr);
    hpIn = h('input', { type: 'text', name: 'website', tabindex: '-1', autocomplete: 'off' });
    submitBtn = h('button', { type: 'submit', class: 'btn' }, t.submit);
    formAlert = h('p', { class: 'alert', 'aria-live': 'assertive' });
    formView = h('form', { novalidate: true, onsubmit: submit },
      h('p', { class: 'promise', 'aria-live': 'polite' }, icon(CLOCK_ICON), promiseText),
      h('div', { class: 'field' }, h('label', { for: 'ab-phone' }, t.phone), h('div', { class: 'tel' }, picker, phoneIn), phoneErr),
      formWhen.el,
      consentBox,
      h('div', { class: 'hp', 'aria-hidden': 'true' }, h('label', {}, 'Website', hpIn)),
      submitBtn,
      formAlert);

    statusLine = h('p', { class: 'status', tabindex: '-1' });
    detailLine = h('p', { class: 'detail' });
    reschedWhen = whenPicker('ab-r-', () => {});
    reschedBtn = h('button', { type: 'submit', class: 'btn' }, t.reschedule);
    reschedBox = h('form', { novalidate: true, hidden: true, onsubmit: reschedule }, reschedWhen.el, reschedBtn);
    cancelBtn = h('button', { type: 'button', class: 'btn2', onclick: cancel }, t.cancel);
    againBtn = h('button', { type: 'button', class: 'btn2', onclick: startOver }, t.again);
    statusAlert = h('p', { class: 'alert', 'aria-live': 'assertive' });
    statusView = h('div', { hidden: true }, statusLine, detailLine, reschedBox, cancelBtn, againBtn, statusAlert);

    title = h('h2', { id: 'ab-title', class: 'title' }, t.title);
    dialog = h('div', { class: 'dialog', role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': 'ab-title', hidden: true, onkeydown: trapTab },
      h('div', { class: 'head' }, title,
        h('button', { type: 'button', class: 'x', 'aria-label': t.close, onclick: close }, '×')),
      formView, statusView);
    // Status changes are announced from here; it sits outside the dialog so it works while it is closed.
    live = h('div', { class: 'sr', 'aria-live': 'polite', role: 'status' });
    root = h('div', { class: 'root', popover: 'manual' }, fab, backdrop, dialog, live);
    shadow.append(root);
    // On <html>, not <body>: a transform or filter on body would become the containing block of the fixed
    // button and carry it off-screen. The top layer (a popover, where the browser has it) also escapes
    // transforms on <html> and every stacking context of the page.
    document.documentElement.append(host);
    try { root.showPopover(); } catch (_) { /* no popover support: fixed on <html> still works */ }
    document.addEventListener('keydown', (e) => { if (isOpen && e.key === 'Escape') { e.stopPropagation(); close(); } });
  }

  // The site's config, before anything is built: its texts override the dictionary (same keys).
  function configure(c) {
    config = { ...config, ...c, fields: c.fields || {}, consent: c.consent || {}, theme: c.theme || {}, countries: c.countries || [] };
    if (!Array.isArray(config.allowed_countries) || !config.allowed_countries.length) config.allowed_countries = ['RU'];
    const texts = c.texts || {};
    t = { ...I18N[lang] };
    for (const k of Object.keys(texts)) if (typeof texts[k] === 'string' && texts[k] && k in t) t[k] = texts[k];
  }
  // Theme colour as a custom property in an adopted sheet (never a style attribute).
  function applyConfig() {
    const color = String(config.theme.color || '');
    if (/^#([0-9a-f]{3}|[0-9a-f]{6})$/i.test(color)) {
      const x = color.length === 4 ? color.replace(/\w/g, '$&$&') : color;
      const [r, g, b] = [1, 3, 5].map((i) => parseInt(x.slice(i, i + 2), 16));
      const dark = 0.299 * r + 0.587 * g + 0.114 * b > 160; // light theme colour: dark text on it
      themeSheet.replaceSync(`:host{--ab-color:${x} !important;--ab-on:${dark ? '#111' : '#fff'} !important}`);
    }
    root.classList.toggle('left', config.theme.position === 'bottom-left');
    setCountry(config.allowed_countries.includes(config.default_country) ? config.default_country : config.allowed_countries[0] || 'RU');
    show(consentBox, !!config.consent.required);
    // consent.text is {ru: "...", en: "..."} (or a plain string)
    const ct = config.consent.text || '';
    consentText.textContent = typeof ct === 'string' ? ct : ct[lang] || ct.en || ct.ru || '';
  }

  // ---- open / close, focus ---------------------------------------------------------------------------
  function focusables() {
    return [...dialog.querySelectorAll('button, input, select, [tabindex="0"]')]
      .filter((el) => !el.disabled && el.tabIndex >= 0 && el.getClientRects().length);
  }
  function trapTab(e) {
    if (e.key !== 'Tab') return;
    const list = focusables();
    if (!list.length) return;
    const first = list[0];
    const last = list[list.length - 1];
    const active = shadow.activeElement;
    if (e.shiftKey && (active === first || !dialog.contains(active))) { e.preventDefault(); last.focus(); }
    else if (!e.shiftKey && (active === last || !dialog.contains(active))) { e.preventDefault(); first.focus(); }
  }
  function open() {
    if (!host) return;
    if (!isOpen) {
      isOpen = true;
      show(backdrop, true);
      show(dialog, true);
      fab.setAttribute('aria-expanded', 'true');
    }
    if (current && view) {
      renderStatus();
      (statusView.querySelector('form:not([hidden]) input') || statusLine).focus();
    } else {
      showForm();
      phoneIn.focus();
    }
  }
  function close() {
    wantOpen = false;
    if (!isOpen) return;
    isOpen = false;
    show(backdrop, false);
    show(dialog, false);
    fab.setAttribute('aria-expanded', 'false');
    fab.focus();
  }

  // ---- the form ----------------------------------------------------------------------------------------
  function showForm() {
    show(formView, true);
    show(statusView, false);
    if (!offer || Date.now() - offer.at > 5 * 60e3) loadOffer().catch(() => {});
  }
  const offerPath = (nb) => `/v1/sites/${encodeURIComponent(siteKey)}/offer?tz=${encodeURIComponent(tz)}&lang=${lang}${nb ? `&not_before=${nb}` : ''}`;
  // A browser may keep an offer a few seconds and revalidates it by ETag, which hands back the form token
  // it came with: fine until that token is spent or refused, then the next offer is fetched anew.
  let tokenUsed = false;
  async function loadOffer() {
    promiseText.textContent = t.loading;
    try {
      const data = await request('GET', offerPath(formWhen.notBefore()), null, {}, tokenUsed ? 'reload' : 'no-cache');
      tokenUsed = false;
      const bits = data.pow && data.pow.bits;
      offer = { data, at: Date.now(), pow: bits ? solvePow(data.form_token, bits) : Promise.resolve(null) };
      formWhen.fill(data);
      reschedWhen.fill(data);
      renderPromise();
      return offer;
    } catch (e) {
      promiseText.textContent = errorText(e);
      throw e;
    }
  }
  // "Not before" changed: ask again what we can promise, but keep the form token we already have
  // (the server counts the minimum fill time from it).
  let refreshTimer = 0;
  function refreshPromise() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(async () => {
      if (!offer) return;
      try {
        const data = await request('GET', offerPath(formWhen.notBefore()), null, {}, 'no-cache');
        offer.data = { ...offer.data, promise: data.promise, open_now: data.open_now };
        renderPromise();
      } catch (e) { promiseText.textContent = errorText(e); }
    }, 400);
  }
  function renderPromise() {
    if (!offer) return;
    const slot = formWhen.slot();
    const p = offer.data.promise;
    promiseText.parentNode.classList.toggle('off', !slot && !p);
    promiseText.textContent = slot ? fmt(t.between, dayOf(slot.start), hm(slot.start), hm(slot.end)) : p ? p.text : t.noPromise;
  }

  function fieldError(input, msg) {
    const err = input === phoneIn ? phoneErr : consentErr;
    err.textContent = msg || '';
    if (msg) {
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-describedby', err.id);
    } else {
      input.removeAttribute('aria-invalid');
      input.removeAttribute('aria-describedby');
    }
  }
  function utm() {
    const out = {};
    new URLSearchParams(location.search).forEach((v, k) => { if (k.startsWith('utm_')) out[k.slice(4)] = v.slice(0, 200); });
    return out;
  }

  // One Idempotency-Key per submission: a retry of the same body (network blip, double click) reuses it.
  let lastBody = '';
  let idemKey = '';
  let busy = false;
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  async function submit(e) {
    e.preventDefault();
    if (busy) return;
    formAlert.textContent = '';
    const phoneProblemText = phoneProblem(phoneIn.value);
    fieldError(phoneIn, phoneProblemText);
    const noConsent = config.consent.required && !consentIn.checked;
    fieldError(consentIn, noConsent ? t.errConsent : null);
    if (phoneProblemText || noConsent) {
      (phoneProblemText ? phoneIn : consentIn).focus();
      return;
    }
    busy = true;
    submitBtn.disabled = true;
    submitBtn.textContent = t.sending;
    try {
      const o = offer || (await loadOffer());
      const slot = formWhen.slot();
      const body = {
        phone: phoneToSend(phoneIn.value), visitor_tz: tz, lang,
        slot_start: slot ? slot.start : null, not_before: formWhen.notBefore(),
        consent: !!consentIn.checked, page_url: location.href.slice(0, 2000), referrer: document.referrer.slice(0, 2000),
        utm: utm(), visitor_id: visitorId(), form_token: o.data.form_token, pow_nonce: await o.pow, website: hpIn.value,
      };
      const json = JSON.stringify(body);
      if (json !== lastBody) { lastBody = json; idemKey = uuid(); }
      const path = `/v1/sites/${encodeURIComponent(siteKey)}/callbacks`;
      let res;
      for (let attempt = 0; ; attempt++) {
        try {
          res = await request('POST', path, body, { 'Idempotency-Key': idemKey });
          break;
        } catch (err) {
          // Retried once, same body and key: answers that never arrived, a flaky gateway, and a form sent
          // faster than the server's minimum fill time (autofill + a quick click is a person, too).
          const tooFast = err.code === 'bot_suspected' && err.field === 'form_token';
          if (attempt > 0 || !(tooFast || err.code === 'offline' || [502, 503, 504].includes(err.status))) throw err;
          await wait(tooFast ? 2000 : 1500);
        }
      }
      offer = null; // the form token is spent
      tokenUsed = true;
      lastBody = '';
      current = { id: res.id, token: res.status_token };
      store.set('sessionStorage', STORE_KEY, JSON.stringify(current));
      view = null;
      document.dispatchEvent(new CustomEvent('abonent:submitted', { detail: { id: res.id } }));
      onStatus({ id: res.id, status: res.status, promise: res.promise, text: res.promise && res.promise.text, attempts: 0, retry_plan: null });
      follow();
      if (isOpen) statusLine.focus();
    } catch (err) {
      const msg = errorText(err);
      if (err.field === 'phone' && err.status === 400) {
        fieldError(phoneIn, msg);
        phoneIn.focus();
      } else if (err.code === 'consent_required') {
        fieldError(consentIn, msg);
        consentIn.focus();
      } else {
        formAlert.textContent = msg;
      }
      // An outdated, spent or refused form token, or a slot that filled up meanwhile: a fresh offer (new
      // token, free slots) for the next press.
      if (err.field === 'form_token' || err.field === 'pow_nonce' || err.code === 'slot_full') {
        tokenUsed = true;
        loadOffer().catch(() => {});
      }
    } finally {
      busy = false;
      submitBtn.disabled = false;
      submitBtn.textContent = t.submit;
    }
  }

  // ---- live status -------------------------------------------------------------------------------------
  let es = null;
  let pollTimer = 0;
  let tickTimer = 0;
  const statusPath = () => `/v1/callbacks/${encodeURIComponent(current.id)}`;
  const tokenQuery = () => `token=${encodeURIComponent(current.token)}`;

  function follow() {
    stopFollowing();
    if (!current || !ACTIVE.includes(view && view.status)) return;
    if (!window.EventSource) { poll(); return; }
    es = new EventSource(`${api}${statusPath()}/events?${tokenQuery()}`);
    es.addEventListener('status', (e) => { try { onStatus(JSON.parse(e.data)); } catch (_) { /* ignore a bad frame */ } });
    // EventSource would reconnect by itself, but proxies that break SSE break it every time: poll instead.
    es.onerror = () => { stopFollowing(); pollTimer = setTimeout(poll, 5000); };
    // A proxy that buffers the stream (or an update lost on the way) fails silently: check now and then.
    pollTimer = setTimeout(poll, 30000);
  }
  function stopFollowing() {
    if (es) es.close();
    es = null;
    clearTimeout(pollTimer);
  }
  async function poll() {
    if (!current) return;
    try {
      onStatus(await request('GET', `${statusPath()}?${tokenQuery()}`));
    } catch (e) {
      if ([401, 403, 404].includes(e.status)) { forget(); return; }
    }
    if (current && (!view || ACTIVE.includes(view.status))) pollTimer = setTimeout(poll, es ? 30000 : 5000);
  }

  function onStatus(v) {
    if (!current || (v.id && v.id !== current.id)) return;
    // A new promise while waiting (the queue moved) is news too: screen readers hear it.
    const repromised = !!(view && view.promise && v.promise && view.promise.latest !== v.promise.latest);
    const changed = !view || view.status !== v.status || view.attempts !== v.attempts || repromised;
    view = { ...view, ...v };
    if (!ACTIVE.includes(view.status)) stopFollowing();
    renderStatus();
    if (changed) live.textContent = statusLine.textContent;
    document.dispatchEvent(new CustomEvent('abonent:status', { detail: v }));
  }

  // Everything on the status screen is derived from the last status view and the clock.
  function renderStatus() {
    if (!current || !view) return;
    show(formView, false);
    show(statusView, true);
    fab.lastChild.textContent = ACTIVE.includes(view.status) ? t.active : t.button;
    const v = view;
    const p = v.promise;
    const t0 = now();
    let line = v.text || '';
    let detail = '';
    let ticking = false;
    const plan = v.retry_plan || {};
    const left = plan.attempts_left;
    const retry = left > 0
      ? [fmt(t.retry, left, t.tries[plural.select(left)] || t.tries.other), plan.last_attempt_by && fmt(t.lastBy, hm(plan.last_attempt_by))].filter(Boolean).join(', ')
      : '';
    switch (v.status) {
      case 'requested':
      case 'scheduled':
        if (v.attempts > 0) {
          line = t.missed;
          const at = plan.next_attempt_at || v.next_attempt_at;
          const next = at && Date.parse(at) - t0;
          detail = [next > 0 ? fmt(t.next, clock(next)) : '', retry].filter(Boolean).join('. ');
          ticking = next > 0;
        } else if (p) {
          const earliest = Date.parse(p.earliest);
          const latest = Date.parse(p.latest);
          // A scheduled call reads "tomorrow at 09:00" (the server's sentence) until its window opens,
          // then counts down like an ASAP one.
          if (p.kind !== 'asap' && earliest > t0) line = v.text || p.text || fmt(t.at, dayAt(p.earliest));
          else if (latest > t0) { line = fmt(t.within, clock(latest - t0)); ticking = true; }
          else line = t.anyMoment;
          if (p.kind === 'asap' || earliest <= t0) detail = t.keep;
        }
        break;
      case 'dialing':
        line = t.dialing;
        detail = v.attempts > 1 && v.max_attempts ? fmt(t.attempt, v.attempts, v.max_attempts) : t.pickUp;
        break;
      case 'connected': line = t.connected; break;
      case 'completed': line = t.completed; break;
      case 'failed': line = t.failed; break;
      case 'expired': line = t.expired; break;
      case 'cancelled': line = t.cancelled; break;
      default: break;
    }
    statusLine.textContent = line;
    detailLine.textContent = detail;
    const missed = v.status === 'failed' || v.status === 'expired';
    show(reschedBox, missed);
    if (missed && !offer) loadOffer().catch((e) => { statusAlert.textContent = errorText(e); });
    show(cancelBtn, ['requested', 'scheduled'].includes(v.status));
    show(againBtn, !ACTIVE.includes(v.status));
    clearTimeout(tickTimer);
    if (ticking && isOpen) tickTimer = setTimeout(renderStatus, 1000 - (now() % 1000) + 20);
  }

  const tokenHeader = () => ({ 'X-Status-Token': current.token });
  async function cancel() {
    statusAlert.textContent = '';
    try {
      onStatus(await request('POST', `${statusPath()}/cancel`, {}, tokenHeader()));
    } catch (e) {
      if (e.status === 409) poll(); // it moved on meanwhile (dialing, done): show what it is now
      else statusAlert.textContent = errorText(e);
    }
  }
  async function reschedule(e) {
    e.preventDefault();
    statusAlert.textContent = '';
    const slot = reschedWhen.slot();
    const nb = reschedWhen.notBefore();
    // "As soon as possible" without a time = not before now.
    const body = slot ? { slot_start: slot.start } : { not_before: nb || new Date(now()).toTimeString().slice(0, 5) };
    reschedBtn.disabled = true;
    try {
      onStatus(await request('POST', `${statusPath()}/reschedule`, body, tokenHeader()));
      follow();
      statusLine.focus();
    } catch (err) {
      if (err.status !== 409) {
        statusAlert.textContent = errorText(err);
        return;
      }
      // The server does not move a finished (missed, expired) request: ask for a new one with the same
      // number and the chosen time. After a reload we no longer have the number, so the form asks again.
      forget();
      showForm();
      formWhen.set(slot, nb);
      if (!phoneProblem(phoneIn.value) && (consentIn.checked || !config.consent.required)) formView.requestSubmit();
      else phoneIn.focus();
    } finally {
      reschedBtn.disabled = false;
    }
  }
  function forget() {
    stopFollowing();
    current = null;
    view = null;
    store.set('sessionStorage', STORE_KEY, null);
    fab.lastChild.textContent = t.button;
  }
  function startOver() {
    forget();
    showForm();
    phoneIn.focus();
  }

  // ---- start -----------------------------------------------------------------------------------------
  let wantOpen = false;
  async function start() {
    try {
      configure(await request('GET', `/v1/sites/${encodeURIComponent(siteKey)}/config?lang=${lang}`));
    } catch (e) {
      // A site that does not exist (or does not allow this page) gets no button at all.
      if (e.status === 404 || e.status === 403) {
        console.warn(`Abonent: site "${siteKey}" is not available here (${e.code})`);
        return;
      }
      configure({}); // offline or unavailable: the button with defaults; opening fetches the offer
    }
    mount();
    applyConfig();
    show(fab, true);
    if (wantOpen) open();
    // A reload in the same tab shows the request we already made.
    try { current = JSON.parse(store.get('sessionStorage', STORE_KEY) || 'null'); } catch (_) { current = null; }
    if (current && current.id && current.token) {
      fab.lastChild.textContent = t.active;
      try {
        onStatus(await request('GET', `${statusPath()}?${tokenQuery()}`));
        follow();
      } catch (e) {
        if ([401, 403, 404].includes(e.status)) forget();
        else poll();
      }
    } else current = null;
  }

  // Site owners' API; open() before the widget is ready opens it once it is.
  window.Abonent = { open: () => (host ? open() : (wantOpen = true)), close: () => close(), version: 1 };
  start();
})();
