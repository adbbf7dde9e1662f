"""Check, through another cluster node's gateway, that what a migrated device had works there: its
API key opens a session, each of its settings (those the cluster shares) holds there, and each of
its models answers a real text_generate. Uses the official MCP Python SDK (installed in .venv by
./setup.sh). Exit status 0 when all holds; otherwise what does not, one line each.

usage: check_through_node.py --via URL [--token-env VAR] [--settings settings.toml] [--models models.json]
"""

import argparse
import asyncio
import json
import os
import sys
import tomllib

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


async def check(args):
    token = os.environ.get(args.token_env, "") if args.token_env else ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    problems = []
    async with httpx2.AsyncClient(headers=headers, timeout=300) as http:
        async with Client(streamable_http_client(args.via, http_client=http), mode="auto") as client:
            print(f"session opened at {args.via}" + (" with the device's key" if token else ""))
            read = await client.read_resource("jetson://config/settings")
            remote = json.loads(read.contents[0].text)
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
    problems = asyncio.run(check(parser.parse_args()))
    for problem in problems:
        print(f"NOT OK: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
