"""The `llama_server` fixture gives a working peer: llama.cpp's own OpenAI-compatible server, driven by
the official `openai` client, streams a chat completion and stops generating when the client leaves.
The tests of the cloud tier's OpenAI-compatible provider talk to this server."""

import openai
from conftest import DEFAULT_MODEL
from natscluster import wait_until

QUESTION = [{"role": "user", "content": "Describe the moon in one sentence."}]


def client_of(llama_server):
    return openai.OpenAI(base_url=llama_server.base_url, api_key="unused-on-loopback", max_retries=0)


def test_streams_a_chat_completion(llama_server):
    chunks = list(
        client_of(llama_server).chat.completions.create(
            model=DEFAULT_MODEL, messages=QUESTION, temperature=0, max_tokens=24, stream=True
        )
    )
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1
    assert "".join(deltas).strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_closing_the_stream_early_stops_the_generation(llama_server):
    cap = 500  # tokens it would generate (end of sequence ignored) if it did not notice the client left
    stream = client_of(llama_server).chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, max_tokens=cap, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(c for c in stream if c.choices and c.choices[0].delta.content)
    stream.close()
    assert first.choices[0].delta.content
    wait_until(llama_server.slots_idle, "llama-server's slots idle", context=llama_server.log.read_text)
    assert 0 < llama_server.tokens_predicted() < cap
