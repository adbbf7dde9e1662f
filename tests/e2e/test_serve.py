"""`jetsonmind serve` driven by the official Python MCP SDK (`mcp`), over
Streamable HTTP and stdio, in the handshake era and the 2026-07-28 era."""

import json
import urllib.error
import urllib.request

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

pytestmark = pytest.mark.anyio

GATEWAY_TOOLS = {"manage_connections", "validate_request", "aggregate_responses", "handle_auth", "protocol_bridge"}
COMPUTE_TOOLS = {
    "text_generate",
    "code_complete",
    "audio_process",
    "image_analyze",
    "multi_modal_inference",
    "embed",
    "rerank",
    "load_model",
    "unload_model",
    "calibrate_engine",
}
DATA_TOOLS = {"update_settings", "manage_models"}
CONTROL_TOOLS = {"route_request", "optimize_system", "manage_resources", "monitor_health", "scale_cluster"}
DATA_RESOURCES = {
    "jetson://models/available",
    "jetson://system/metrics",
    "jetson://cache/inference",
    "jetson://data/cache",
    "jetson://config/settings",
    "jetson://performance/analytics",
}
COMPUTE_RESOURCES = {"jetson://compute/status"}
CONTROL_RESOURCES = {"jetson://control/alerts"}
EXPECTED_VERSION = {"legacy": "2025-11-25", "auto": "2026-07-28"}


def text_of(result):
    return " ".join(block.text for block in result.content if block.type == "text")


async def test_lists_all_four_servers(transport, mode):
    async with Client(transport, mode=mode) as client:
        assert client.protocol_version == EXPECTED_VERSION[mode]
        assert client.server_info.name == "jetsonmind-gateway"
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert tools == GATEWAY_TOOLS | COMPUTE_TOOLS | DATA_TOOLS | CONTROL_TOOLS
        resources = {str(r.uri) for r in (await client.list_resources()).resources}
        assert resources == DATA_RESOURCES | COMPUTE_RESOURCES | CONTROL_RESOURCES
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert templates == {"jetson://models/{name}"}


async def test_reads_real_system_metrics(transport, mode):
    async with Client(transport, mode=mode) as client:
        result = await client.read_resource("jetson://system/metrics")
        metrics = json.loads(result.contents[0].text)
        with open("/proc/meminfo") as f:
            mem_total_kib = int(f.readline().split()[1])
        assert metrics["memory"]["total_bytes"] == mem_total_kib * 1024
        assert metrics["cpu"]["cores"] >= 1
        assert 0 <= metrics["cpu"]["usage_percent"] <= 100
        assert metrics["uptime_seconds"] > 0


async def test_calls_tools_through_the_gateway(transport, mode):
    async with Client(transport, mode=mode) as client:
        result = await client.call_tool("manage_connections", {"action": "list"})
        assert not result.is_error, text_of(result)
        backends = {b["name"]: b for b in result.structured_content["backends"]}
        assert set(backends) == {"compute", "data", "control"}
        assert all(b["up"] for b in backends.values())
        assert [r["name"] for r in backends["compute"]["replicas"]] == ["compute-local"]
        assert backends["compute"]["replicas"][0]["tools"] == len(COMPUTE_TOOLS)

        result = await client.call_tool("validate_request", {"tool": "text_generate", "arguments": {"max_tokens": -1}})
        assert result.structured_content["valid"] is False
        assert any("/max_tokens" in e for e in result.structured_content["errors"])


async def test_bad_input_gets_clear_errors(transport, mode):
    async with Client(transport, mode=mode) as client:
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("no_such_tool", {})
        assert unknown.value.code == -32602
        assert "no_such_tool" in unknown.value.message

        result = await client.call_tool("text_generate", {"prompt": 42, "temperature": 9})
        assert result.is_error
        assert "/prompt" in text_of(result) and "/temperature" in text_of(result)

        with pytest.raises(MCPError):
            await client.read_resource("jetson://no/such/resource")

        # Still serving after all of that.
        assert len((await client.list_tools()).tools) == len(GATEWAY_TOOLS | COMPUTE_TOOLS | DATA_TOOLS | CONTROL_TOOLS)


def raw_post(url, body, headers=None):
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("accept", "application/json, text/event-stream")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def test_http_limits_and_checks_keep_the_server_serving(served):
    ping = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    assert raw_post(served.url, ping) == 200
    oversized = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"pad": "x" * (17 << 20)}})
    assert raw_post(served.url, oversized.encode()) == 413
    assert raw_post(served.url, ping, {"origin": "http://evil.example"}) == 403
    assert raw_post(served.url, ping, {"host": "evil.example:80"}) == 403
    async with Client(served.url, mode="auto") as client:
        assert len((await client.list_tools()).tools) == len(GATEWAY_TOOLS | COMPUTE_TOOLS | DATA_TOOLS | CONTROL_TOOLS)
    assert served.process.poll() is None
