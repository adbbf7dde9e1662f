"""llama.cpp's own OpenAI-compatible server (tools/server, as `llama-server` runs it), from the PyPI
wheel `xllamacpp` (pinned in requirements.txt): the server compiled in, started in this process.
The wheel saves compiling llama.cpp a second time at set-up (the crate builds its own copy without
the server's sources), about 15 minutes on 2 cores. It has no command line, so this is one: the
flags of `llama-server` that the tests use, with its meaning. The server announces
"listening on http://HOST:PORT" in its log once the model is loaded; SIGTERM stops it.

    python llama_server.py --model M.gguf [--host 127.0.0.1] [--port 0] [--parallel N] [--ctx-size N]
        [--threads N] [--threads-batch N] [--batch-size N] [--ubatch-size N] [--kv-unified]
        [--cont-batching] [--metrics] [--api-key KEY]
    python llama_server.py --version

A flag not given keeps the wheel's default, which is llama.cpp's (`common_params`).
"""

import argparse
import importlib.metadata
import signal
import sys

import xllamacpp


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: a free port, announced in the log")
    parser.add_argument("--parallel", type=int, help="slots, each its own sequence")
    parser.add_argument("--ctx-size", type=int, help="shared by the slots")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--threads-batch", type=int, help="threads reading prompts")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--ubatch-size", type=int)
    parser.add_argument("--kv-unified", action="store_true", help="one KV cache shared by the slots")
    parser.add_argument("--cont-batching", action="store_true", help="llama.cpp's default already")
    parser.add_argument("--metrics", action="store_true", help="Prometheus /metrics")
    parser.add_argument("--api-key", help="required of every request but /health")
    return parser.parse_args(argv)


def version():
    """The wheel's version and source commit, which pins the llama.cpp it vendors (the build itself
    records no llama.cpp commit). Built for a generic CPU (AVX2 on x86_64, armv8-a on ARM), not
    with this machine's native flags."""
    from xllamacpp._version import get_versions

    commit = get_versions().get("full-revisionid") or "unknown"
    return f"xllamacpp {importlib.metadata.version('xllamacpp')} (source commit {commit}, generic CPU build)"


def params_of(options):
    params = xllamacpp.CommonParams()
    params.model.path = options.model
    params.hostnames = [options.host]
    params.port = options.port
    given = {
        "n_parallel": options.parallel,
        "n_ctx": options.ctx_size,
        "n_batch": options.batch_size,
        "n_ubatch": options.ubatch_size,
    }
    for field, value in given.items():
        if value is not None:
            setattr(params, field, value)
    if options.threads is not None:
        params.cpuparams.n_threads = options.threads
    if options.threads_batch is not None:
        params.cpuparams_batch.n_threads = options.threads_batch
    params.kv_unified = options.kv_unified or params.kv_unified
    params.cont_batching = options.cont_batching or params.cont_batching
    params.endpoint_metrics = options.metrics
    params.endpoint_slots = True  # llama-server's default
    if options.api_key:
        params.api_keys = [options.api_key]
    return params


def main(argv):
    if argv == ["--version"]:  # not argparse's: it wraps the line
        print(version())
        return
    params = params_of(parse(argv))
    # Blocked before the server starts, so its threads inherit the mask: a SIGTERM at any moment,
    # during the model's load included, waits here and stops the server cleanly.
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    server = xllamacpp.Server(params)  # returns once the model is loaded and it listens
    signal.sigwait(stop)
    del server  # stops its threads and frees the model before the interpreter exits


if __name__ == "__main__":
    main(sys.argv[1:])
