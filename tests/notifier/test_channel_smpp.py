"""SMPP 3.4 against a real SMSC implementation (npm `smpp`'s server, tests/fakes/smpp_server/server.js).

The npm package is installed on first use into a cache folder outside the repository (npm registry
needed once; CI caches it like any package download). The tests skip, saying why, only when node/npm
are absent or the install fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.notifier.channels.base import (
    DeliveryReceipt,
    OutboundMessage,
    RecipientUnreachable,
    TransientChannelError,
)
from services.notifier.channels.smpp import SmppChannel
from services.notifier.domain.segments import split_segments

SERVER_DIR = Path(__file__).parents[1] / "fakes" / "smpp_server"
LONG_RUSSIAN = (
    "Здравствуйте! Мы не смогли до вас дозвониться в 14:30. Выберите другое удобное время по ссылке "
    "https://ex.am/r/abc123 — ссылка действует сутки. Если звонок больше не нужен, просто проигнорируйте."
)


@pytest.fixture(scope="session")
def smpp_node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(
            reason="node and npm are needed for the test SMSC (npm `smpp`); install Node.js to run these"
        )
    cache = Path(
        os.environ.get("ABONENT_NPM_CACHE_DIR", Path(tempfile.gettempdir()) / f"abonent-smsc-{os.getuid()}")
    )
    modules = cache / "node_modules"
    if not (modules / "smpp" / "package.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy(SERVER_DIR / "package.json", cache / "package.json")
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent"],
            cwd=cache,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(reason=f"npm install smpp failed (no registry?): {done.stderr.strip()[-300:]}")
    return modules


class Smsc:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.port = 0

    async def read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.events.append(json.loads(line))
            self._changed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        async def wait() -> list[dict[str, Any]]:
            while len(self.of(kind)) < count:
                self._changed.clear()
                await self._changed.wait()
            return self.of(kind)

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{count} × {kind} expected; got {self.events}") from None

    async def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()


@contextlib.asynccontextmanager
async def running_smsc(modules: Path, **env: str) -> AsyncIterator[Smsc]:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(SERVER_DIR / "server.js"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules), **env},
    )
    smsc = Smsc(process)
    reader = asyncio.create_task(smsc.read())
    try:
        smsc.port = (await smsc.wait_for("listening"))[0]["port"]
        yield smsc
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


@contextlib.asynccontextmanager
async def channel_for(smsc: Smsc, receipts: list[DeliveryReceipt]) -> AsyncIterator[SmppChannel]:
    async def sink(receipt: DeliveryReceipt) -> None:
        receipts.append(receipt)

    channel = SmppChannel(
        host="127.0.0.1",
        port=smsc.port,
        system_id="abonent",
        password="secret",
        sender="Abonent",
        enquire_link_s=0.3,
        response_timeout_s=10.0,
        receipt_sink=sink,
    )
    await channel.start()
    try:
        assert await channel.wait_bound(20), f"never bound; SMSC saw {smsc.events}"
        yield channel
    finally:
        await channel.close()


async def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def message(address: str = "+79251234567", text: str = "Hello") -> OutboundMessage:
    return OutboundMessage(message_id=uuid.uuid4(), address=address, text=text)


async def test_long_ucs2_message_goes_in_udh_parts_and_its_receipt_arrives(smpp_node_modules: Path) -> None:
    receipts: list[DeliveryReceipt] = []
    async with running_smsc(smpp_node_modules) as smsc, channel_for(smsc, receipts) as channel:
        assert smsc.of("bind") == [{"event": "bind", "system_id": "abonent"}]
        result = await channel.send(message(text=LONG_RUSSIAN))
        _, expected_parts = split_segments(LONG_RUSSIAN)
        submits = smsc.of("submit_sm")
        assert result.segments == len(submits) == len(expected_parts) == 3
        for number, submit in enumerate(submits, start=1):
            assert submit["destination"] == "79251234567"
            assert submit["source"] == "Abonent"
            assert submit["data_coding"] == 8  # UCS-2
            assert submit["esm_class"] & 0x40  # UDHI
            # 05 00 03 <ref> <total> <seq>: one reference for all parts, numbered 1..3.
            (udh,) = submit["udh"]
            assert udh[:4] == "0003"
            assert udh[6:] == f"03{number:02d}"
        assert len({submit["udh"][0][4:6] for submit in submits}) == 1
        assert "".join(submit["message"] for submit in submits) == LONG_RUSSIAN
        assert result.provider_message_id == submits[0]["id"]
        # One receipt per part comes back; the message's is its first part's.
        await wait_until(lambda: len(receipts) >= 3)
        assert {r.provider_message_id for r in receipts} == {s["id"] for s in submits}
        mine = [r for r in receipts if r.provider_message_id == result.provider_message_id]
        assert [(r.channel, r.status) for r in mine] == [("smpp", "delivered")]


async def test_short_gsm_message_is_one_plain_part(smpp_node_modules: Path) -> None:
    receipts: list[DeliveryReceipt] = []
    undeliverable = running_smsc(smpp_node_modules, SMSC_UNDELIVERABLE="79250000000")
    async with undeliverable as smsc, channel_for(smsc, receipts) as channel:
        if True:
            result = await channel.send(message("+79250000000", "Calling you now"))
            (submit,) = smsc.of("submit_sm")
            assert (submit["esm_class"] & 0x40, submit["udh"], submit["message"]) == (
                0,
                [],
                "Calling you now",
            )
            assert result.segments == 1
            await wait_until(lambda: len(receipts) == 1)
            assert (receipts[0].status, receipts[0].reason) == ("failed", "UNDELIV err:001")


async def test_throttled_submit_backs_off_then_goes_once(smpp_node_modules: Path) -> None:
    receipts: list[DeliveryReceipt] = []
    throttling = running_smsc(smpp_node_modules, SMSC_THROTTLE="79990000058:2")
    async with throttling as smsc, channel_for(smsc, receipts) as channel:
        if True:
            outbound = message("+79990000058", "throttled")
            with pytest.raises(TransientChannelError) as first:
                await channel.send(outbound)
            assert first.value.retry_after_s is not None
            assert first.value.retry_after_s >= 1
            # The session itself pauses after ESME_RTHROTTLED: the next submit leaves only after the back-off.
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TransientChannelError):
                await channel.send(outbound)
            assert loop.time() - started >= 0.9
            result = await channel.send(outbound)
            assert [s["destination"] for s in smsc.of("submit_sm")] == ["79990000058"]
            assert result.provider_message_id == smsc.of("submit_sm")[0]["id"]


# aiosmpplib forgets the StreamWriter of a connection the SMSC dropped without closing it; its __del__
# then complains at garbage collection. The socket is already closed by the peer: nothing leaks.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_enquire_link_and_reconnect_after_the_smsc_drops_us(smpp_node_modules: Path) -> None:
    receipts: list[DeliveryReceipt] = []
    async with running_smsc(smpp_node_modules) as smsc, channel_for(smsc, receipts) as channel:
        await smsc.wait_for("enquire_link")
        await smsc.command("drop")
        await smsc.wait_for("bind", count=2)
        assert await channel.wait_bound(20)
        result = await channel.send(message(text="after reconnect"))
        assert result.provider_message_id == smsc.of("submit_sm")[-1]["id"]


async def test_unbound_channel_refuses_without_sending(smpp_node_modules: Path) -> None:
    channel = SmppChannel(host="127.0.0.1", port=1, system_id="abonent", password="secret")
    with pytest.raises(TransientChannelError, match="not bound"):
        await channel.send(message())
    await channel.close()


def test_unreachable_status_maps_to_recipient_unreachable() -> None:
    from aiosmpplib import SmppCommandStatus  # type: ignore[import-untyped]

    channel = SmppChannel(host="127.0.0.1", port=1, system_id="abonent", password="secret")
    assert isinstance(channel._error(SmppCommandStatus.ESME_RINVDSTADR, 1), RecipientUnreachable)
