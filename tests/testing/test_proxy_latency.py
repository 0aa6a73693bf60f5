"""``FaultyProxy(latency=, jitter=)``: a delay on the wire, for the WAN benchmarks and users' tests.

The only timing asserted is a lower bound, which proves the delay was applied
(performance belongs to ``benchmarks/``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from google.cloud.firestore_v1.async_client import AsyncClient

from async_batchstate import ConfigurationError
from async_batchstate.testing import EmulatorInfo, FaultyProxy, aclose_client, make_client

# -- latency: arguments and byte order (a local echo server, no emulator) ---------------


@pytest.mark.parametrize(
    "kwargs",
    [{"latency": -0.001}, {"jitter": -1.0}, {"latency": math.nan}, {"jitter": math.inf}],
    ids=["negative-latency", "negative-jitter", "nan-latency", "infinite-jitter"],
)
def test_a_bad_delay_is_a_configuration_error(kwargs: dict[str, Any]) -> None:
    """Negative or non-finite delays are refused at construction with ConfigurationError."""
    with pytest.raises(ConfigurationError, match="finite number of seconds >= 0"):
        FaultyProxy("127.0.0.1:1", **kwargs)


@pytest_asyncio.fixture
async def echo_server() -> AsyncIterator[str]:
    """A loopback server that sends back every chunk it reads; yields its ``host:port``."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_jitter_never_reorders_the_bytes_of_a_connection(echo_server: str) -> None:
    """Chunks whose random delays cross still arrive in the order they were sent."""
    sent = b"".join(f"<{i:04d}>".encode() for i in range(400))
    proxy = FaultyProxy(echo_server, latency=0.005, jitter=0.005, rng=random.Random(7))
    async with proxy:
        reader, writer = await asyncio.open_connection(*proxy.host.split(":"))
        for i in range(0, len(sent), 60):  # many small writes: many chunks, many draws
            writer.write(sent[i : i + 60])
            await writer.drain()
            await asyncio.sleep(0)
        received = await reader.readexactly(len(sent))
        writer.close()
    assert sent == received


def test_repr_shows_the_delay() -> None:
    """A delaying proxy says so in its repr."""
    assert "latency=0.007s+-0.001s" in repr(FaultyProxy("127.0.0.1:1", latency=0.007, jitter=0.001))


# -- on the emulator ------------------------------------------------------------------


@pytest_asyncio.fixture
async def slow_client(firestore_emulator: EmulatorInfo) -> AsyncIterator[AsyncClient]:
    """A client whose connection to the emulator crosses a proxy with 50 ms each way."""
    async with FaultyProxy(firestore_emulator.host, latency=0.05) as proxy:
        client = make_client(EmulatorInfo(proxy.host, firestore_emulator.project, None))
        try:
            yield client
        finally:
            await aclose_client(client)


async def test_latency_applies_in_both_directions(
    slow_client: AsyncClient, batch_collection: str
) -> None:
    """One read through a 50 ms proxy takes at least 100 ms: request and answer are delayed."""
    ref = slow_client.collection(batch_collection).document("d")
    await ref.get()  # connection set up before the measured call
    t0 = time.perf_counter()
    await ref.get()
    assert time.perf_counter() - t0 >= 0.1
