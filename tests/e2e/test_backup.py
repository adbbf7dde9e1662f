"""`jetsonmind backup` and `jetsonmind restore` with the real binary: a node's state (the default
model, a setting changed through the gateway, an API key) backed up while `jetsonmind serve` runs,
restored into a fresh data dir and served from there: the key authenticates, the setting holds, the
model answers. A damaged or truncated archive is refused, its target untouched."""

import json
import re
import shutil
import subprocess

import pytest
from mcp import Client

from conftest import DEFAULT_MODEL, NO_CACHE, create_key, make_data_dir, start_serve, stop_serve
from test_auth import Statuses, client_with

pytestmark = pytest.mark.anyio

SECURED = {**NO_CACHE, "JETSONMIND_AUTH__REQUIRED": "true"}
TTL = 321


def jetsonmind(binary, data_dir, *args):
    """`jetsonmind --data-dir DATA_DIR ARGS`, finished: (returncode, stdout, stderr)."""
    done = subprocess.run([str(binary), "--data-dir", str(data_dir), *args], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def shown(binary, data_dir):
    """What `models list`, `keys list` and `config` show of a data dir (its own path left out)."""
    outputs = []
    for command in (["models", "list"], ["keys", "list"], ["config"]):
        code, out, err = jetsonmind(binary, data_dir, *command)
        assert code == 0, err
        outputs.append(out.replace(str(data_dir), "<data dir>"))
    return outputs


def authenticated(served, key):
    return client_with(served.url, key, Statuses())


@pytest.fixture(scope="module")
async def backed_up(binary, tmp_path_factory):
    """A node served with auth required, its setting changed and its model loaded, backed up while it
    runs: (archive, key, data dir)."""
    root = tmp_path_factory.mktemp("backup")
    data = make_data_dir(binary, root / "node")
    key = create_key(binary, data, "ops", "admin")
    served = start_serve(binary, data, root / "serve.log", SECURED)
    try:
        http, client = authenticated(served, key)
        async with http, client:
            changed = await client.call_tool("update_settings", {"settings": {"cache": {"ttl_secs": TTL}}})
            assert not changed.is_error, changed.content
            answered = await client.call_tool("text_generate", {"prompt": "Hi", "max_tokens": 2})
            assert not answered.is_error, answered.content
        code, out, err = jetsonmind(binary, data, "backup")
    finally:
        stop_serve(served)
    assert code == 0, err
    archive = data / "backups" / out.strip().rsplit("/", 1)[-1]
    assert out.strip() == str(archive) and archive.name.startswith("jetsonmind-"), out
    assert "model store" in err and "api keys" in err, err
    return archive, key, data


async def test_a_restored_node_serves_what_was_backed_up(binary, backed_up, tmp_path):
    archive, key, data = backed_up
    restored = tmp_path / "restored"
    code, out, err = jetsonmind(binary, restored, "restore", str(archive))
    assert code == 0, err
    assert f"into {restored}" in out

    models, keys, config = shown(binary, restored)
    assert [models, keys, config] == shown(binary, data)
    assert DEFAULT_MODEL in models and "\tops\tadmin" in keys and f"ttl_secs = {TTL}" in config
    code, out, err = jetsonmind(binary, restored, "models", "verify", DEFAULT_MODEL)
    assert code == 0, out + err
    assert (restored / "api_keys.json").stat().st_mode & 0o777 == 0o600

    served = start_serve(binary, restored, tmp_path / "serve.log", SECURED)
    try:
        http, client = authenticated(served, key)
        async with http, client:
            settings = json.loads((await client.read_resource("jetson://config/settings")).contents[0].text)
            assert settings["cache"]["ttl_secs"] == TTL
            result = await client.call_tool(
                "text_generate", {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 32}
            )
        assert not result.is_error, result.content
        assert "Paris" in result.content[0].text
        with pytest.raises(Exception):  # the SDK's error, inside an exception group
            async with Client(served.url):
                pass
    finally:
        stop_serve(served)


def damaged(archive, out):
    """A copy of `archive` with one byte of the model's weights flipped (tar checksums only headers)."""
    shutil.copyfile(archive, out)
    with open(out, "r+b") as f:
        middle = out.stat().st_size // 2
        f.seek(middle)
        byte = f.read(1)
        f.seek(middle)
        f.write(bytes([byte[0] ^ 0xFF]))


def truncated(archive, out):
    shutil.copyfile(archive, out)
    with open(out, "r+b") as f:
        f.truncate(out.stat().st_size // 2)


def snapshot(directory):
    """Every file under `directory` and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "spoil, expected",
    [(damaged, r"models/blobs/sha256-[0-9a-f]{64} does not match the manifest"), (truncated, "truncated")],
)
async def test_a_spoiled_archive_is_refused_and_the_target_untouched(binary, backed_up, tmp_path, spoil, expected):
    archive, _, _ = backed_up
    spoiled = tmp_path / "spoiled.tar"
    spoil(archive, spoiled)
    target = tmp_path / "target"
    target.mkdir()
    (target / "settings.toml").write_text("[cache]\nttl_secs = 5\n")
    before = snapshot(target)

    code, _, err = jetsonmind(binary, target, "restore", str(spoiled), "--force")

    assert code != 0
    assert re.search(expected, err), err
    assert "panicked" not in err
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spoiled.tar", "target"], "nothing staged is left"
