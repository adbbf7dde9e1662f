"""Protocol bridging, driven by the official Python MCP SDK: a remote gateway
served on stdio by `jetsonmind bridge` (how a desktop client reaches another
machine), and a stdio-only MCP server (one written with the Python SDK)
federated into a running gateway with `protocol_bridge`."""

import os
import subprocess
import sys

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from conftest import start_jetsonmind, stop_serve

pytestmark = pytest.mark.anyio

ECHO_SERVER = """
from mcp.server.mcpserver import MCPServer

server = MCPServer("py-echo")

@server.tool()
def shout(text: str) -> str:
    \"\"\"Say it louder.\"\"\"
    return text.upper() + "!"

server.run("stdio")
"""


@pytest.fixture
def remote(binary, tmp_path):
    """A gateway that requires an API key, as another machine would run it."""
    data_dir = tmp_path / "remote"
    key = subprocess.run(
        [str(binary), "--data-dir", str(data_dir), "keys", "create", "--name", "laptop", "--scope", "tools:*"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    served = start_jetsonmind(
        binary,
        ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        tmp_path / "remote.log",
        {"JETSONMIND_AUTH__REQUIRED": "true"},
    )
    yield served, key
    stop_serve(served)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_bridge_serves_a_remote_gateway_on_stdio(binary, remote, tmp_path, mode):
    served, key = remote
    bridge = StdioServerParameters(
        command=str(binary),
        args=["bridge", served.url, "--token-env", "REMOTE_KEY", "--data-dir", str(tmp_path / "local")],
        env={**os.environ, "REMOTE_KEY": key},
    )
    async with Client(bridge, mode=mode) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        # Exactly what the key may use on the remote gateway, nothing added.
        assert "text_generate" in tools and "monitor_health" in tools
        assert "scale_cluster" not in tools
        health = await client.call_tool("monitor_health", {})
        assert not health.is_error, health.content
        assert health.structured_content["fleet"] == "compute"
        whoami = await client.call_tool("handle_auth", {"action": "whoami"})
        assert whoami.structured_content["principal"]["name"] == "laptop"


async def test_a_bridge_without_the_key_offers_nothing_and_says_why(binary, remote, tmp_path):
    served, _ = remote
    bridge = StdioServerParameters(
        command=str(binary), args=["bridge", served.url, "--data-dir", str(tmp_path / "local")], env=dict(os.environ)
    )
    async with Client(bridge, mode="legacy") as client:
        assert (await client.list_tools()).tools == []


async def test_protocol_bridge_federates_a_stdio_server_at_run_time(binary, data_dir, tmp_path):
    script = tmp_path / "echo_server.py"
    script.write_text(ECHO_SERVER)
    served = start_jetsonmind(
        binary, ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)], tmp_path / "serve.log"
    )
    told = anyio.Event()

    async def on_message(message):
        if isinstance(message, types.ToolListChangedNotification):
            told.set()

    try:
        # A handshake-era client on an HTTP session watches the list.
        async with (
            Client(served.url, mode="legacy", message_handler=on_message) as watcher,
            Client(served.url, mode="auto") as client,
        ):
            added = await client.call_tool(
                "protocol_bridge", {"action": "add", "name": "py", "command": [sys.executable, str(script)]}
            )
            assert not added.is_error, added.content
            assert added.structured_content["up"] is True
            assert added.structured_content["tools"] == ["shout"]
            with anyio.fail_after(10):
                await told.wait()
            assert "shout" in {t.name for t in (await watcher.list_tools(cache_mode="bypass")).tools}
            tools = {t.name for t in (await client.list_tools(cache_mode="bypass")).tools}
            assert "shout" in tools
            result = await client.call_tool("shout", {"text": "hello"})
            assert result.content[0].text == "HELLO!"
            listed = await client.call_tool("protocol_bridge", {"action": "list"})
            assert [b["name"] for b in listed.structured_content["bridges"]] == ["py"]
            again = await client.call_tool(
                "protocol_bridge", {"action": "add", "name": "py", "command": [sys.executable, str(script)]}
            )
            assert again.is_error and "exists already" in again.content[0].text
            bad = await client.call_tool("protocol_bridge", {"action": "add", "name": "x", "url": "ftp://nowhere"})
            assert bad.is_error
    finally:
        stop_serve(served)
