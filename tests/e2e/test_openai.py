"""The gateway's OpenAI-compatible API, driven by the official `openai` Python
client: the same text_generate tool behind /v1/chat/completions."""

import openai
import pytest


@pytest.fixture
def client(served):
    base = served.url.removesuffix("/mcp") + "/v1"
    return openai.OpenAI(base_url=base, api_key="unused-on-loopback", max_retries=0)


def test_lists_the_model_store(client):
    ids = [model.id for model in client.models.list()]
    assert ids == ["SmolLM2-135M-Instruct.Q4_1.gguf"]


def test_chat_completion(client):
    response = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1.gguf",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        temperature=0,
        max_tokens=24,
    )
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streaming_matches_the_whole_answer(client):
    request = {
        "model": "default",
        "messages": [{"role": "user", "content": "Describe the moon in one sentence."}],
        "temperature": 0,
        "max_tokens": 40,
        "seed": 1,
    }
    whole = client.chat.completions.create(**request).choices[0].message.content
    chunks = list(client.chat.completions.create(**request, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole
    assert len([c for c in chunks if c.choices[0].delta.content]) >= 2
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_errors_are_openai_shaped(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "no model `gpt-4o`" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], temperature=7)
    assert "/temperature" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}])


def test_usage_reports_the_reused_prompt_prefix_and_streams_last(client):
    """Agents resend a long system prompt with every call: the second call reads only its own question
    (the compute server's prefix cache), and says so in OpenAI's usage.prompt_tokens_details."""
    system = " ".join(f"Rule {i}: answer briefly and kindly." for i in range(60))

    def ask(question, **more):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return client.chat.completions.create(model="default", messages=messages, temperature=0, max_tokens=8,
                                              **more)

    first = ask("Name a colour.")
    second = ask("Name a fruit.")
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert 300 < second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
    chunks = list(ask("Name a tree.", stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens > 0
    assert last.usage.prompt_tokens_details.cached_tokens > 300
    assert all(c.usage is None for c in chunks[:-1])
