// A test SMSC built on npm `smpp`'s server: binds, answers submit_sm, sends deliver_sm receipts.
// Prints one JSON line per event on stdout ("listening", "bind", "submit_sm", ...) for the test to read;
// reads commands on stdin: "drop" closes every session (the client must reconnect).
"use strict";
const smpp = require("smpp");
const readline = require("readline");

const SYSTEM_ID = process.env.SMSC_SYSTEM_ID || "abonent";
const PASSWORD = process.env.SMSC_PASSWORD || "secret";
// Destinations that get ESME_RTHROTTLED for their first N submits: "number:N,number:N".
const throttle = new Map(
  (process.env.SMSC_THROTTLE || "").split(",").filter(Boolean).map((p) => {
    const [number, count] = p.split(":");
    return [number, Number(count)];
  })
);
const undeliverable = new Set((process.env.SMSC_UNDELIVERABLE || "").split(",").filter(Boolean));
const sessions = new Set();
let nextId = 1000;

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function smppDate(date) {
  const p = (n) => String(n).padStart(2, "0");
  return p(date.getUTCFullYear() % 100) + p(date.getUTCMonth() + 1) + p(date.getUTCDate()) +
    p(date.getUTCHours()) + p(date.getUTCMinutes());
}

const server = smpp.createServer((session) => {
  sessions.add(session);
  session.on("close", () => sessions.delete(session));
  session.on("error", () => sessions.delete(session));
  session.on("bind_transceiver", (pdu) => {
    if (pdu.system_id !== SYSTEM_ID || pdu.password !== PASSWORD) {
      emit({ event: "bind_refused", system_id: pdu.system_id });
      session.send(pdu.response({ command_status: smpp.ESME_RBINDFAIL }));
      session.close();
      return;
    }
    emit({ event: "bind", system_id: pdu.system_id });
    session.send(pdu.response());
  });
  session.on("enquire_link", (pdu) => {
    emit({ event: "enquire_link" });
    session.send(pdu.response());
  });
  session.on("unbind", (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on("submit_sm", (pdu) => {
    const destination = pdu.destination_addr;
    const left = throttle.get(destination) || 0;
    if (left > 0) {
      throttle.set(destination, left - 1);
      emit({ event: "throttled", destination });
      session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED }));
      return;
    }
    const id = String(nextId++);
    // The raw user data: smpp decodes short_message into {udh, message}; keep what the handset gets.
    const sm = pdu.short_message;
    const udh = sm && sm.udh ? sm.udh.map((h) => Buffer.from(h).toString("hex")) : [];
    const message = sm && typeof sm.message === "string" ? sm.message : String(sm && sm.message || "");
    emit({
      event: "submit_sm", id, destination, source: pdu.source_addr, esm_class: pdu.esm_class,
      data_coding: pdu.data_coding, udh, message, registered_delivery: pdu.registered_delivery,
    });
    session.send(pdu.response({ message_id: id }));
    if (pdu.registered_delivery & 1) {
      const now = smppDate(new Date());
      const stat = undeliverable.has(destination) ? "UNDELIV" : "DELIVRD";
      const err = stat === "DELIVRD" ? "000" : "001";
      setTimeout(() => {
        session.deliver_sm({
          source_addr: destination,
          destination_addr: pdu.source_addr,
          esm_class: 0x04,
          short_message: `id:${id} sub:001 dlvrd:${stat === "DELIVRD" ? "001" : "000"} submit date:${now} ` +
            `done date:${now} stat:${stat} err:${err} text:`,
          receipted_message_id: id,
        });
      }, 20);
    }
  });
});

server.listen(0, "127.0.0.1", () => emit({ event: "listening", port: server.address().port }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "drop") {
    for (const session of sessions) session.close();
    emit({ event: "dropped" });
  }
});
process.stdin.on("end", () => process.exit(0));
