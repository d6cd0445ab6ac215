// Agent console: heartbeat keeps presence alive (a closed tab drops out within seconds), the state
// poll shows the live call and its client card before the visitor's phone rings.
(function () {
  "use strict";
  var HEARTBEAT_MS = 2000;
  var $ = function (id) { return document.getElementById(id); };
  var busy = false;

  function api(path, body) {
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: body === undefined ? "{}" : JSON.stringify(body)
    }).then(function (response) {
      if (response.status === 401) { window.location.href = "/agent/login"; throw new Error("signed out"); }
      return response.json().then(function (data) {
        if (!response.ok) { throw new Error((data.error && data.error.message) || "Request failed"); }
        return data;
      });
    });
  }

  function row(label, value) {
    var dt = document.createElement("dt"); dt.textContent = label;
    var dd = document.createElement("dd"); dd.textContent = value;
    return [dt, dd];
  }

  function render(state) {
    $("who").textContent = state.name + " (" + state.login + ")";
    $("status").textContent = state.status;
    $("status").dataset.status = state.status;
    document.querySelectorAll("[data-presence]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.presence === state.status));
    });
    var call = state.call;
    $("call").hidden = !call;
    $("idle").hidden = !!call;
    if (!call) { return; }
    var card = call.card;
    $("stage").textContent = call.stage.replace(/_/g, " ");
    $("answer").hidden = !(state.can_simulate && call.stage === "agent_ringing");
    $("visitor-answer").hidden = !(state.can_simulate && call.stage === "visitor_ringing");
    var dl = $("card");
    dl.replaceChildren();
    var utm = Object.keys(card.utm).map(function (k) { return k + "=" + card.utm[k]; }).join(", ");
    [
      row("Phone", card.phone), row("Site", card.site_name + " (" + card.site_key + ")"),
      row("Page", card.page_url || "—"), row("Referrer", card.referrer || "—"), row("UTM", utm || "—"),
      row("Promised by", new Date(card.promised_latest).toLocaleTimeString()),
      row("Waiting", Math.round(card.waited_s) + " s"),
      row("Attempt", card.attempt + " of " + card.max_attempts)
    ].forEach(function (pair) { dl.append(pair[0], pair[1]); });
    var body = $("earlier").tBodies[0];
    body.replaceChildren();
    card.earlier.forEach(function (e) {
      var tr = document.createElement("tr");
      [new Date(e.requested_at).toLocaleString(), e.site_key, e.status, e.outcome || "—", e.page_url || "—"]
        .forEach(function (text) { var td = document.createElement("td"); td.textContent = text; tr.append(td); });
      body.append(tr);
    });
    if (!card.earlier.length) {
      var tr = document.createElement("tr"); var td = document.createElement("td");
      td.colSpan = 5; td.textContent = "First request from this visitor"; tr.append(td); body.append(tr);
    }
  }

  function act(promise) {
    busy = true;
    return promise.then(function (state) { $("error").textContent = ""; render(state); })
      .catch(function (e) { $("error").textContent = e.message; })
      .then(function () { busy = false; });
  }

  function tick() {
    if (!busy) { act(api("/agent/api/heartbeat")); }
  }

  document.querySelectorAll("[data-presence]").forEach(function (button) {
    button.addEventListener("click", function () { act(api("/agent/api/presence", { status: button.dataset.presence })); });
  });
  $("answer").addEventListener("click", function () { act(api("/agent/api/call/answer")); });
  $("visitor-answer").addEventListener("click", function () { act(api("/agent/api/call/visitor-answer")); });
  $("hangup").addEventListener("click", function () { act(api("/agent/api/call/hangup")); });
  // Closing the tab: tell the server at once instead of waiting for the presence TTL.
  window.addEventListener("pagehide", function () { navigator.sendBeacon("/agent/api/offline"); });
  tick();
  setInterval(tick, HEARTBEAT_MS);
}());
