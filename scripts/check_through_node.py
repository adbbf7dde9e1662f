"""Check, through another cluster node's gateway, that what a migrated device had works there: its
API key opens a session, each of its settings (those the cluster shares) holds there, and each of
its models answers a real text_generate. Uses the official MCP Python SDK (installed in .venv by
./setup.sh). Exit status 0 when all holds; otherwise what does not, one line each.

For scripts/integrate_cloud_backup.sh, in this order when given: --wait-setting waits (up to
--wait-s, reconnecting while the node restarts) until the node's settings hold KEY=VALUE; --update
sends update_settings (--dry-run: only asks whether it would be taken), first writing to
--undo-file the patch that puts back what the keys held; --cloud waits until the node's routing
has an available replica of that cloud cluster; --failover sends N text_generate calls at once and
needs at least one served in the cloud tier.

usage: check_through_node.py --via URL [--token-env VAR] [--settings settings.toml] [--models models.json]
           [--wait-setting KEY=VALUE] [--update JSON [--dry-run] [--undo-file FILE]] [--cloud CLUSTER]
           [--failover N [--model NAME]] [--wait-s SECS]
"""

import argparse
import asyncio
import json
import os
import sys
import time
import tomllib

import anyio

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def leaves(table, prefix=""):
    """Every dotted key of a TOML table that holds a value, with the value."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def lookup(tree, key):
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def within(outer, key):
    return key == outer or key.startswith(outer + ".")


def session(args):
    """An MCP session at --via with the key of --token-env: (http client, MCP client) to enter."""
    token = os.environ.get(args.token_env, "") if args.token_env else ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=300)
    return http, Client(streamable_http_client(args.via, http_client=http), mode="auto")


async def read_settings(client):
    read = await client.read_resource("jetson://config/settings", cache_mode="bypass")
    return json.loads(read.contents[0].text)


async def until(args, what, attempt):
    """`attempt(client)` in a new session each time until it returns something true (a node may be
    restarting) or --wait-s passed; a problem saying what was last seen, or None."""
    deadline, last = time.monotonic() + args.wait_s, "no answer"
    while True:
        try:
            http, client = session(args)
            async with http, client:
                seen = await attempt(client)
                if seen is True:
                    return None
                last = seen
        except Exception as error:  # the node restarting, or not serving yet
            last = f"{type(error).__name__}: {error}"
        if time.monotonic() > deadline:
            return f"{what}: not so after {args.wait_s} s (last seen: {last})"
        await anyio.sleep(0.5)


def wants_setting(spec):
    key, _, value = spec.partition("=")

    async def holds(client):
        there = lookup(await read_settings(client), key)
        return True if str(there) == value else f"{key} = {there!r}"

    return f"setting {key} = {value}", holds


async def update(client, args):
    """update_settings with --update; the undo patch written first. A problem, or None."""
    patch = json.loads(args.update)
    if args.undo_file:
        current = await read_settings(client)
        undo = {}
        for key, _ in leaves(patch):
            *path, last = key.split(".")
            table = undo
            for part in path:
                table = table.setdefault(part, {})
            table[last] = lookup(current, key)
        with open(args.undo_file, "w") as file:
            json.dump(undo, file)
    result = await client.call_tool("update_settings", {"settings": patch, "dry_run": args.dry_run})
    said = result.content[0].text if result.content else ""
    if result.is_error:
        return f"update_settings refused {patch}: {said}"
    print(f"update_settings{' (dry run)' if args.dry_run else ''} takes {json.dumps(patch)}")
    return None


async def route(client, tool="text_generate", arguments=None):
    result = await client.call_tool("route_request", {"tool": tool, "arguments": arguments or {"prompt": "ping"}})
    return json.loads(result.content[0].text)["decision"]


def sees_cloud(cluster):
    async def available(client):
        candidates = (await route(client))["candidates"]
        cloud = [c for c in candidates if c["replica"].startswith(f"compute@{cluster}.")]
        if any(c.get("excluded") is None for c in cloud):
            return True
        return f"cloud replicas {[(c['replica'], c.get('excluded')) for c in cloud]}"

    return f"routing has a replica of the cloud cluster {cluster}", available


async def failover(client, args):
    """--failover calls at once, more than the site takes under its ceiling: some must run in the cloud."""
    arguments = {"prompt": "Say hello.", "max_tokens": 8, "temperature": 0}
    if args.model:
        arguments["model"] = args.model
    hops = [None] * args.failover

    async def one(i):
        result = await client.call_tool("text_generate", {**arguments, "prompt": f"Say hello ({i})."})
        hops[i] = "error" if result.is_error else (result.meta or {}).get("jetsonmind/route", [{}])[-1]

    async with anyio.create_task_group() as calls:
        for i in range(args.failover):
            calls.start_soon(one, i)
    tiers = {}
    for hop in hops:
        tier = hop if hop == "error" else f"{hop.get('tier', '?')} ({hop.get('node', '?')})"
        tiers[tier] = tiers.get(tier, 0) + 1
    print(f"{args.failover} calls at once served by tier (node): {tiers}")
    if not any(hop != "error" and hop.get("tier") == "cloud" for hop in hops):
        return (f"none of {args.failover} calls at once overflowed to the cloud: {tiers} (the site takes more "
                "under its ceiling, or the egress policy keeps them here)")
    if "error" in tiers:
        return f"{tiers['error']} of {args.failover} calls failed"
    return None


async def cloud_steps(args):
    """The steps of integrate_cloud_backup.sh that were asked for, in order: problems."""
    if args.wait_setting and (problem := await until(args, *wants_setting(args.wait_setting))):
        return [problem]
    if args.update:
        http, client = session(args)
        async with http, client:
            if problem := await update(client, args):
                return [problem]
    if args.cloud and (problem := await until(args, *sees_cloud(args.cloud))):
        return [problem]
    if args.failover:
        http, client = session(args)
        async with http, client:
            if problem := await failover(client, args):
                return [problem]
    return []


async def check(args):
    problems = []
    http, client = session(args)
    async with http, client:
        token = bool(args.token_env and os.environ.get(args.token_env))
        print(f"session opened at {args.via}" + (" with the device's key" if token else ""))
        remote = await read_settings(client)
        scope = remote["scope"]
        if args.settings and os.path.exists(args.settings):
            with open(args.settings, "rb") as file:
                local = tomllib.load(file)
            for key, value in leaves(local):
                if any(within(own, key) for own in scope["node_keys"]):
                    continue
                if any(within(trust, key) or within(key, trust) for trust in scope["trust_keys"]):
                    print(f"setting {key}: decides who is trusted, kept to this device (an admin sets it "
                          "for the cluster with update_settings)")
                    continue
                there = lookup(remote, key)
                if there == value:
                    print(f"setting {key} = {value!r} holds there")
                elif key in scope["cluster_values"]:
                    # The cluster set it before this device joined: its value wins.
                    print(f"setting {key}: the cluster's {there!r} holds there (this device had {value!r})")
                else:
                    problems.append(f"setting {key}: {value!r} here, {there!r} there")
        models = []
        if args.models:
            with open(args.models) as file:
                # Text models (GGUF): the ones text_generate runs.
                models = [model["name"] for model in json.load(file) if model["format"] == "gguf"]
        for model in models:
            result = await client.call_tool(
                "text_generate", {"model": model, "prompt": "Say hello.", "max_tokens": 8, "temperature": 0}
            )
            text = (result.structured_content or {}).get("text", "")
            if result.is_error or not text.strip():
                problems.append(f"model {model}: {result.content[0].text if result.content else 'no answer'}")
            else:
                hop = (result.meta or {}).get("jetsonmind/route", [{}])[-1]
                print(f"model {model} answers there (served by {hop.get('node', '?')}): {text.strip()!r}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--via", required=True, help="another node's gateway: http://HOST:PORT/mcp")
    parser.add_argument("--token-env", help="environment variable holding the API key to use")
    parser.add_argument("--settings", help="the migrated device's settings.toml")
    parser.add_argument("--models", help="`jetsonmind models list --json` of the migrated device")
    parser.add_argument("--wait-setting", metavar="KEY=VALUE", help="wait until the node's settings hold it")
    parser.add_argument("--update", metavar="JSON", help="update_settings with this patch (an admin's key)")
    parser.add_argument("--dry-run", action="store_true", help="--update only asks whether it would be taken")
    parser.add_argument("--undo-file", help="where --update writes the patch that undoes it")
    parser.add_argument("--cloud", metavar="CLUSTER", help="wait until routing has this cloud cluster's replica")
    parser.add_argument("--failover", type=int, default=0, metavar="N", help="N calls at once, some in the cloud")
    parser.add_argument("--model", help="the model --failover calls name (default: the node's default)")
    parser.add_argument("--wait-s", type=float, default=120, help="longest wait of --wait-setting and --cloud")
    args = parser.parse_args()
    cloud = args.wait_setting or args.update or args.cloud or args.failover
    problems = asyncio.run(cloud_steps(args) if cloud else check(args))
    for problem in problems:
        print(f"NOT OK: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
