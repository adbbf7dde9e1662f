"""optimize_system on a real `jetsonmind serve` with the real default model, driven by the official
Python MCP SDK: it measures candidate engine settings, applies the best through the settings (the
compute server follows them at once), a repeated run agrees within noise, and `revert` restores
what it replaced. On a fake Jetson (a sysfs tree and stand-in nvpmodel and jetson_clocks commands) the
power mode and pinned clocks are candidates too."""

import anyio
import pytest
from mcp import Client

import fake_jetson
from conftest import make_data_dir, read_json, start_serve, stop_serve

pytestmark = pytest.mark.anyio

# Small calibration calls: each candidate is measured in about a second on two cores.
SEARCH = {"prompt_tokens": 32, "max_tokens": 16, "max_candidates": 5, "budget_secs": 300}
TUNED = ("threads", "parallel", "batch_size", "ubatch_size", "flash_attention")


@pytest.fixture
def served(binary, tmp_path):
    data = make_data_dir(binary, tmp_path / "data")
    # The engine settings are left to the config (not the environment), which would override
    # what optimize_system writes.
    served = start_serve(binary, data, tmp_path / "serve.log", {"JETSONMIND_MCP__LIST_TTL_MS": "0"})
    yield served, data
    stop_serve(served)


async def optimize(client, arguments, progress=None):
    result = await client.call_tool("optimize_system", arguments, progress_callback=progress)
    assert not result.is_error, result.content
    return result.structured_content


async def engine(client):
    return (await read_json(client, "jetson://compute/status"))["engine"]


def score_of(outcome, settings):
    return next(row["score"] for row in outcome["candidates"] if row["settings"] == settings)


async def test_throughput_is_measured_applied_repeatable_and_reverted(served):
    server, data = served
    async with Client(server.url, mode="auto") as client:
        await client.call_tool("text_generate", {"prompt": "Hi", "max_tokens": 2})
        before = await engine(client)
        heard = []

        async def on_progress(progress, total, message):
            heard.append(message)

        first = await optimize(client, {"target_metric": "throughput", **SEARCH}, on_progress)
        rows = first["candidates"]
        assert len(rows) >= 3, rows
        assert rows[0]["current"] and rows[0]["settings"] == before
        for row in rows:
            assert row["figures"]["tokens_per_second"] > 0 and row["score"] > 0, row
            assert row["clients"] == row["settings"]["parallel"]
        assert len({tuple(row["settings"][k] for k in TUNED) for row in rows}) == len(rows)
        best = max(rows, key=lambda row: row["score"])
        # The best is applied when it beats the settings in use by more than noise (5%).
        if best["score"] < rows[0]["score"] * 1.05:
            best = rows[0]
        assert first["winner"] == best["settings"], first["why"]
        assert len(heard) == len(rows) - 1 and "measured" in heard[-1], heard

        # The winner is in effect now (or already was), and saved.
        assert await engine(client) == best["settings"]
        if best["settings"] != before:
            assert set(first["applied"]["effective_now"]) == {f"compute.{k}" for k in TUNED}
            saved = (data / "settings.toml").read_text()
            assert f"parallel = {best['settings']['parallel']}" in saved, saved
            answer = await client.call_tool("text_generate", {"prompt": "Hi", "max_tokens": 4})
            assert not answer.is_error and answer.structured_content["text"].strip()

        # Measured again, without applying: the same settings score alike, and nothing beats
        # the applied ones by more than noise.
        second = await optimize(client, {"target_metric": "throughput", "dry_run": True, **SEARCH})
        assert second["applied"] is None and await engine(client) == best["settings"]
        again = score_of(second, best["settings"])
        assert 0.67 < again / best["score"] < 1.5, (best, second["candidates"])
        top = max(row["score"] for row in second["candidates"] if row["score"])
        assert top < again * 1.3, second["candidates"]

        if best["settings"] != before:
            reverted = await optimize(client, {"action": "revert"})
            assert reverted["replaced"] == best["settings"]
            assert await engine(client) == before
            assert "parallel" not in (data / "settings.toml").read_text()
        nothing = await client.call_tool("optimize_system", {"action": "revert"})
        assert nothing.is_error and "nothing to revert" in nothing.content[0].text


async def test_latency_runs_one_call_at_a_time_and_a_dry_run_changes_nothing(served):
    server, data = served
    async with Client(server.url, mode="auto") as client:
        before = await engine(client)
        outcome = await optimize(client, {"target_metric": "latency", "dry_run": True, **SEARCH})
        assert outcome["basis"]["higher_is_better"] is False
        rows = outcome["candidates"]
        assert len(rows) >= 2 and all(row["clients"] == 1 for row in rows), rows
        # One call at a time: the slots are not searched.
        assert {row["settings"]["parallel"] for row in rows} == {before["parallel"]}
        fastest = min(rows, key=lambda row: row["score"])
        assert outcome["best_gain_percent"] == pytest.approx(rows[0]["score"] / fastest["score"] * 100 - 100)
        if fastest["score"] * 1.05 > rows[0]["score"]:
            fastest = rows[0]
        assert fastest["settings"] == outcome["winner"], outcome["why"]
        assert outcome["applied"] is None and await engine(client) == before
        assert not (data / "settings.toml").exists() or "threads" not in (data / "settings.toml").read_text()

        missing = await client.call_tool("optimize_system", {})
        assert missing.is_error and "target_metric" in missing.content[0].text
        hot = await client.call_tool("optimize_system", {"target_metric": "fastest"})
        assert hot.is_error


async def test_calls_are_served_while_it_measures_and_the_measurement_gives_way(served):
    server, _ = served
    async with Client(server.url, mode="auto") as client:
        outcome = {}
        answers = []

        async def tune():
            outcome.update(await optimize(client, {"target_metric": "throughput", "dry_run": True, **SEARCH}))

        async def chat():
            # A few calls while it measures (each a prompt of its own: the cache answers no repeat).
            await anyio.sleep(1)
            for i in range(4):
                prompt = f"Say hello to number {i}."
                answers.append(await client.call_tool("text_generate", {"prompt": prompt, "max_tokens": 8}))
                await anyio.sleep(1.5)

        async with anyio.create_task_group() as group:
            group.start_soon(tune)
            group.start_soon(chat)
        assert answers and not [a for a in answers if a.is_error], [a.content for a in answers]
        rows = outcome["candidates"]
        assert len(rows) >= 3 and all(row["score"] > 0 for row in rows), rows
        # Each measurement that met a real call stopped and was run again after it.
        assert sum(row["figures"]["yielded"] for row in rows) >= 1, rows


async def test_on_a_jetson_power_modes_and_clocks_are_measured_applied_and_reverted(binary, tmp_path):
    board = tmp_path / "board"
    fake_jetson.make_tree(board, mode=0)
    data = make_data_dir(binary, tmp_path / "data")
    env = {"JETSONMIND_MCP__LIST_TTL_MS": "0", **fake_jetson.config_env(board)}
    served = start_serve(binary, data, tmp_path / "serve.log", env)
    power = lambda row: (row["settings"]["power_mode"], row["settings"]["max_clocks"])  # noqa: E731
    mode_now = lambda: fake_jetson.read(board, "var/lib/nvpmodel/status").split()[0]  # noqa: E731
    pinned_now = lambda: (  # noqa: E731
        fake_jetson.read(board, f"{fake_jetson.GPU}/min_freq") == fake_jetson.read(board, f"{fake_jetson.GPU}/max_freq")
    )
    # The current settings, the other mode, then pinned clocks in the better of the two.
    search = {"target_metric": "efficiency", **SEARCH, "max_candidates": 3}
    try:
        async with Client(served.url, mode="auto") as client:
            await client.call_tool("text_generate", {"prompt": "Hi", "max_tokens": 2})
            dry = await optimize(client, {**search, "dry_run": True})
            assert dry["power"]["searched"], dry["power"]
            assert [(m["id"], m["name"]) for m in dry["power"]["modes"]] == [(0, "MAXN"), (1, "7W")]
            assert "power rails" in dry["basis"]["score"]
            rows = dry["candidates"]
            assert [power(row) for row in rows] == [(0, False), (1, False), (1, True)], rows
            assert all(row["joules"] > 0 and row["score"] > 0 for row in rows), rows
            # The same tokens on 7 W instead of 15 W (or 12 W pinned): the 7 W mode, clocks free.
            assert power({"settings": dry["winner"]}) == (1, False), dry["why"]
            # A dry run leaves the board as it found it.
            assert (mode_now(), pinned_now()) == ("pmode:0000", False)
            assert fake_jetson.calls(board) == [
                ["nvpmodel", "1"],
                ["jetson_clocks", "--store"],
                ["jetson_clocks"],
                ["nvpmodel", "0"],
            ]

            applied = await optimize(client, search)
            assert power({"settings": applied["winner"]}) == (1, False), applied["why"]
            assert applied["applied"] is not None
            assert (mode_now(), pinned_now()) == ("pmode:0001", False)
            assert fake_jetson.calls(board)[-1] == ["jetson_clocks", "--restore"]

            reverted = await optimize(client, {"action": "revert"})
            assert reverted["restored_power"] == {"power_mode": 0, "max_clocks": False}
            assert (mode_now(), pinned_now()) == ("pmode:0000", False)
            assert fake_jetson.calls(board)[-1] == ["nvpmodel", "0"]
    finally:
        stop_serve(served)
