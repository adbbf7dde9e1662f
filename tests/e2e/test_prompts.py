"""Prompts and completions of `jetsonmind serve`, federated by its gateway,
through the official Python MCP SDK over Streamable HTTP in both eras."""

import json

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import PromptReference, ResourceTemplateReference

from conftest import DEFAULT_MODEL

pytestmark = pytest.mark.anyio


async def test_prompts_are_listed_and_summarize_names_the_model(served, mode):
    async with Client(served.url, mode=mode) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        assert set(prompts) == {"summarize", "explain_device_health"}
        required = {a.name for a in prompts["summarize"].arguments if a.required}
        assert required == {"text"}

        text = "Jetson modules run inference at the edge on a few watts."
        result = await client.get_prompt("summarize", {"text": text, "model": DEFAULT_MODEL, "max_words": "10"})
        message = result.messages[0].content.text
        assert "`text_generate`" in message
        assert f'"model": "{DEFAULT_MODEL}"' in message
        assert message.endswith(text)

        with pytest.raises(MCPError, match="it has: " + DEFAULT_MODEL):
            await client.get_prompt("summarize", {"text": text, "model": "no-such-model.gguf"})


async def test_the_health_prompt_embeds_this_machines_metrics(served, mode):
    async with Client(served.url, mode=mode) as client:
        result = await client.get_prompt("explain_device_health")
        embedded = result.messages[0].content.resource
        assert str(embedded.uri) == "jetson://system/metrics"
        with open("/proc/meminfo") as f:
            mem_total_kib = int(f.readline().split()[1])
        assert json.loads(embedded.text)["memory"]["total_bytes"] == mem_total_kib * 1024


async def test_model_names_complete_the_template_and_the_prompt(served, mode):
    async with Client(served.url, mode=mode) as client:
        prefix = DEFAULT_MODEL[:5]
        template = ResourceTemplateReference(type="ref/resource", uri="jetson://models/{name}")
        names = (await client.complete(template, {"name": "name", "value": prefix})).completion
        assert DEFAULT_MODEL in names.values
        assert all(value.startswith(prefix) for value in names.values)

        prompt = PromptReference(type="ref/prompt", name="summarize")
        models = (await client.complete(prompt, {"name": "model", "value": prefix})).completion
        assert DEFAULT_MODEL in models.values

        none = (await client.complete(template, {"name": "name", "value": "zz-no-model"})).completion
        assert none.values == []
