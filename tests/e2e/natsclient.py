"""nats-py helpers the tests share: a connection that does not hide a cut, and a stream's contents as a
client sees them."""

from contextlib import asynccontextmanager

import nats
from nats.js.errors import NotFoundError


@asynccontextmanager
async def nats_client(url):
    """A nats-py connection that gives up at once when its server is gone (no reconnect hiding a cut)."""
    client = await nats.connect(url, allow_reconnect=False, connect_timeout=5)
    try:
        yield client
    finally:
        await client.close()


async def stream_exists(js, name):
    try:
        await js.stream_info(name)
    except NotFoundError:
        return False
    return True


async def stream_payloads(js, name):
    """Every message the stream holds now, oldest first."""
    info = await js.stream_info(name)
    first, last = info.state.first_seq, info.state.last_seq
    return [(await js.get_msg(name, seq)).data for seq in range(first, last + 1)] if info.state.messages else []


async def caught_up(js, name, count):
    """The stream holds at least `count` messages and what it sources or mirrors reports no lag."""
    info = await js.stream_info(name)
    origins = [*(info.sources or []), *([info.mirror] if info.mirror else [])]
    return info.state.messages >= count and all(origin.lag == 0 for origin in origins)
