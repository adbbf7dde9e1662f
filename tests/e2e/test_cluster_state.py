"""What a cluster holds in common on JetStream, end to end: three nats-servers (one JetStream
cluster) and three `jetsonmind serve --cluster` nodes, driven by the official Python MCP SDK.

Models: a model published at node 1 (`manage_models`) is pulled, checked and run at node 3 when a
call through node 3's gateway names it; node 3's store then holds it with the published sha256,
and every node lists it with the nodes that hold it and run it."""

import pytest
from mcp import Client

from conftest import (
    DEFAULT_MODEL,
    MODELS,
    NO_CACHE,
    cluster_node_data,
    eventually,
    import_model,
    node_of,
    read_json,
    start_cluster_node,
    start_nodes,
    stop_serve,
)

pytestmark = pytest.mark.anyio

# Watched lists and reads are fetched again each time; compute has room for a model or two.
ENV = {
    **NO_CACHE,
    "JETSONMIND_MCP__LIST_TTL_MS": "0",
    "JETSONMIND_MCP__READ_TTL_MS": "0",
    "JETSONMIND_GATEWAY__HEALTH_INTERVAL_MS": "500",
    "JETSONMIND_COMPUTE__MEMORY_BUDGET_BYTES": str(2 << 30),
}
SHARED_MODEL = "smol-shared"


def listed(models, name):
    """The model `name` of a models list, or None."""
    return next((m for m in models if m["name"] == name), None)


class Progress:
    """The progress notifications of one call: (progress, total, message)."""

    def __init__(self):
        self.seen = []

    async def __call__(self, progress, total, message):
        self.seen.append((progress, total, message))

    def messages(self, prefix):
        return [m for _, _, m in self.seen if m and m.startswith(prefix)]


@pytest.fixture
def publisher_and_two(binary, tmp_path, nats_cluster):
    """n1 holds the default model twice (also as `smol-shared`) and shares no compute, so the
    others can run `smol-shared` only by pulling it; n2 and n3 hold the default model only."""
    data = cluster_node_data(binary, tmp_path, "n1")
    import_model(binary, data, MODELS / DEFAULT_MODEL, "--name", SHARED_MODEL, "--link")
    nodes = {"n1": start_cluster_node(binary, tmp_path, nats_cluster.urls, "n1", {**ENV, "JETSONMIND_CLUSTER__SHARE": "[]"})}
    nodes.update(start_nodes(binary, tmp_path, nats_cluster, ["n2", "n3"], ENV))
    yield nodes
    for node in nodes.values():
        if node.process.poll() is None:
            stop_serve(node)


async def test_a_model_published_at_one_node_is_pulled_and_run_at_another(publisher_and_two):
    nodes = publisher_and_two
    async with Client(nodes["n1"].url, mode="auto") as n1:
        published_progress = Progress()
        published = await n1.call_tool(
            "manage_models", {"action": "publish", "name": SHARED_MODEL}, progress_callback=published_progress
        )
        assert not published.is_error, published.content
        entry = published.structured_content
        original = listed((await read_json(n1, "jetson://models/available"))["models"], SHARED_MODEL)
        assert (entry["name"], entry["published_by"], entry["sha256"]) == (SHARED_MODEL, "n1", original["sha256"])
        assert published_progress.messages(f"publishing {SHARED_MODEL}: "), published_progress.seen

    async with Client(nodes["n3"].url, mode="auto") as n3:
        assert listed((await read_json(n3, "jetson://models/available"))["models"], SHARED_MODEL) is None
        pulled_progress = Progress()
        result = await n3.call_tool(
            "text_generate",
            {"prompt": "What is the capital of France?", "model": SHARED_MODEL, "temperature": 0, "max_tokens": 24},
            progress_callback=pulled_progress,
        )
        assert not result.is_error, result.content
        assert "Paris" in result.content[0].text, result.content
        assert result.structured_content["model"] == SHARED_MODEL
        assert node_of(result) == "n3", result.meta
        assert pulled_progress.messages(f"pulling {SHARED_MODEL}: "), pulled_progress.seen
        counts = [progress for progress, _, _ in pulled_progress.seen]
        assert counts == sorted(counts), pulled_progress.seen
        pulled = listed((await read_json(n3, "jetson://models/available"))["models"], SHARED_MODEL)
        assert pulled["sha256"] == entry["sha256"]
        assert pulled["source"] == "cluster:jetsonmind/n1"

    async with Client(nodes["n2"].url, mode="auto") as n2:

        async def placed():
            available = await read_json(n2, "jetson://models/available")
            assert listed(available["models"], SHARED_MODEL) is None, "n2 pulled a model it never ran"
            model = listed(available["cluster"]["models"], SHARED_MODEL)
            return model if {"n1", "n3"} <= set(model["held_by"]) and "n3" in model["loaded_by"] else None

        model = await eventually("n2 sees where the model is", placed)
        assert model["sha256"] == entry["sha256"]
        assert model["published_by"] == "n1"
        assert "n2" not in model["held_by"]
