"""The dualblade demo: a real daemon, a KV block round trip and restore, and generation through it.

What it does, in under a minute on a laptop-class CPU, with no root and no network:

1. starts ``dualbladed`` on the embedded default -- a file-backed namespace in a temporary
   state directory -- as a child process, and waits for its ``READY=1`` (as systemd would);
2. puts one KV block (a ``[tokens, heads, head_dim]`` fp16 tensor) as a persistent object, reads
   it back into a zero-copy arena tensor, restarts the daemon and restores the block from the
   namespace in a new session (checksummed on read);
3. builds a tiny randomly initialised Llama (``--layers`` layers, offline: no hub, no tokenizer)
   and runs greedy generation three ways, interleaved over ``--rounds`` rounds: transformers'
   own ``DynamicCache``; ``DualBladeCache`` as a CPU user gets it by default (the KV fits in
   memory, so it stays there and every token is written behind to the daemon, one append batch
   per step); and ``DualBladeCache(resident_bytes=0)``: at most the window of two layers' KV is
   in memory and every other layer's past is read back from the daemon each step. It checks the
   tokens against DynamicCache's and prints median tokens per second for all three;
4. prints where the KV went: bytes per residency path from the daemon's admin Status (root or
   the admin group), or, when admin is refused, from what the session itself can list;
5. stops the daemon with SIGTERM and reports its exit status.

``tools/demo.sh`` creates the virtual environment first; run this file directly inside one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _mib(n: float) -> str:
    return f"{n / 2**20:8.2f} MiB"


def kv_block_roundtrip(daemon: Any, connect: Any) -> None:
    """Put one KV block, read it into an arena tensor, restart the daemon, restore it."""
    import torch

    block = torch.randn(64, 8, 128).half()  # 64 tokens x 8 KV heads x head_dim 128
    key = b"demo/prompt-0/L0/k/B0"
    with connect("demo") as client:
        info = client.put(key, block, persistent=True)
        _say(f"  put {key.decode()}: {info.size} bytes on the {info.path} path")
        out = client.arena_tensor(block.shape, block.dtype)  # the daemon reads into it in place
        client.get_into(key, out)
        same = torch.equal(out, block)
        client.release_tensor(out)
        _say(f"  get_into an arena tensor: {'identical' if same else 'MISMATCH'}")
        if not same:
            raise SystemExit("KV block round trip returned different bytes")
    t0 = time.perf_counter()
    daemon.terminate()
    daemon.start()
    _say(f"  daemon restarted in {time.perf_counter() - t0:.2f} s")
    with connect("demo") as client:
        st = client.stat(key)
        restored = torch.empty_like(block)
        client.get_into(key, restored)
        same = torch.equal(restored, block)
        _say(
            f"  restored after restart: {st.size} bytes, persistent={st.persistent}, "
            f"checksum {st.checksum:016x}: {'identical' if same else 'MISMATCH'}"
        )
        client.delete(key)
        if not same:
            raise SystemExit("restored KV block differs")


def build_model(layers: int, hidden: int) -> Any:
    from dualblade_tools.tinymodels import tiny_model

    return tiny_model(
        "llama",
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=2048,
    )


def generate(model: Any, ids: Any, cache: Any, new_tokens: int) -> tuple[Any, float]:
    import torch

    from dualblade.integrations.transformers import generate_kwargs

    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **generate_kwargs(model, cache),
        )
    return out, time.perf_counter() - t0


def where_the_kv_went(client: Any, listed: list[Any]) -> None:
    """Bytes per residency path: admin Status when allowed, else this session's own objects."""
    import grpc

    from dualblade.v1 import dualblade_pb2 as pb

    try:
        status = client.admin.Status(pb.StatusRequest(), metadata=client._metadata)
    except grpc.RpcError as err:
        if err.code() not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            raise
        _say("  (admin Status refused for this user: showing what this session can list)")
        per_path: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for info in listed:
            per_path[info.path or "?"][0] += 1
            per_path[info.path or "?"][1] += info.size
        for path, (objects, nbytes) in sorted(per_path.items()):
            _say(f"  {path:<10} {objects:6d} objects {_mib(nbytes)} (the sequence's KV)")
        return
    traffic: dict[tuple[str, str], int] = defaultdict(int)
    as_op = {"put": "put", "append": "put", "get": "get", "readrange": "get"}  # layer objects too
    for m in status.metrics:
        if m.tenant == client.tenant and m.op in as_op:
            traffic[(m.path, as_op[m.op])] += m.bytes
    paths = sorted({p for p, _ in traffic})
    _say(f"  tenant {client.tenant}, per residency path (daemon counters):")
    for path in paths:
        _say(
            f"  {path:<10} put {_mib(traffic[(path, 'put')])}   get {_mib(traffic[(path, 'get')])}"
        )
    if listed:
        per_path_bytes: dict[str, int] = defaultdict(int)
        for info in listed:
            per_path_bytes[info.path or "?"] += info.size
        held = ", ".join(f"{p} {_mib(n).strip()}" for p, n in sorted(per_path_bytes.items()))
        _say(f"  the sequence's KV at the end of generation: {held}")
    _say(
        f"  namespace {status.namespace_kind} {status.namespace_path}: "
        f"{_mib(status.capacity_bytes - status.free_bytes).strip()} used of "
        f"{_mib(status.capacity_bytes).strip()}"
    )


def run_generation(args: argparse.Namespace, connect: Any) -> bool:
    import statistics

    import torch
    from transformers import DynamicCache

    from dualblade.integrations.transformers import DualBladeCache

    model = build_model(args.layers, args.hidden)
    cfg = model.config
    ids = torch.randint(
        0, cfg.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(1)
    )
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4
    total = args.prompt + args.new_tokens
    _say(
        f"  tiny random Llama: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_key_value_heads} KV heads; prompt {args.prompt} tokens, "
        f"{args.new_tokens} new; KV {_mib(kv_per_token * total).strip()} at the end"
    )
    generate(model, ids[:, :8], DynamicCache(config=cfg), 2)  # warm-up (kernels, allocator)
    seconds: dict[str, list[float]] = {"dynamic": [], "resident": [], "window": []}
    stats: dict[str, Any] = {}
    same = True
    with connect("demo-llm", arena_bytes=128 << 20) as client:
        # Interleaved rounds, medians: a load spike on a shared machine then weighs on all three.
        for _ in range(args.rounds):
            ref, ref_s = generate(model, ids, DynamicCache(config=cfg), args.new_tokens)
            seconds["dynamic"].append(ref_s)
            # resident (the default on a CPU model): the KV stays in memory, every token is
            # written behind to the daemon; resident_bytes=0: only the window of 2 layers is in
            # memory and every other layer's past is read back from the daemon each step.
            for name, resident in (("resident", "auto"), ("window", 0)):
                with DualBladeCache(
                    client, cfg, window=2, block_tokens=args.block, resident_bytes=resident
                ) as cache:
                    out, db_s = generate(model, ids, cache, args.new_tokens)
                    cache.finish()  # every appended token is stored in the daemon now
                    stats[name] = cache.pipeline.stats()
                    if name == "resident":
                        listed = client.list(f"db/seq/{cache.sequence_id}/".encode())
                seconds[name].append(db_s)
                same = same and torch.equal(out, ref)
        rate = {k: args.new_tokens / statistics.median(v) for k, v in seconds.items()}
        spread = {
            k: f"{args.new_tokens / max(v):.1f}-{args.new_tokens / min(v):.1f}"
            for k, v in seconds.items()
        }
        res, win = stats["resident"], stats["window"]
        _say(
            f"  tokens/s, median of {args.rounds} interleaved rounds:\n"
            f"  DynamicCache (all KV in memory):         {rate['dynamic']:8.1f} (range {spread['dynamic']})\n"
            f"  DualBladeCache (KV resident, daemon):    {rate['resident']:8.1f} (range {spread['resident']}, "
            f"{rate['resident'] / rate['dynamic']:.2f}x; {res.write_bytes / 2**20:.1f} MiB "
            f"appended in {res.writes} batches, {res.read_bytes / 2**20:.1f} MiB read back)\n"
            f"  DualBladeCache (resident_bytes=0):       {rate['window']:8.1f} (range {spread['window']}, "
            f"{rate['window'] / rate['dynamic']:.2f}x; window=2, "
            f"{win.read_bytes / 2**20:.1f} MiB read back in {win.read_calls} batched calls)\n"
            f"  tokens identical to DynamicCache: {'yes' if same else 'NO'}"
        )
        where_the_kv_went(client, listed)
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--block", type=int, default=64, help="tokens per stored KV block")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved timing rounds (medians are shown)"
    )
    parser.add_argument("--state-dir", help="keep the daemon's files here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.layers < 3:
        parser.error("--layers must be >= 3 so that the window (2) is smaller than the model")

    import torch

    from dualblade import Client
    from dualblade_tools.daemonproc import DaemonProcess

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    with tempfile.TemporaryDirectory(prefix="dualblade-demo-") as tmp:
        root = Path(args.state_dir) if args.state_dir else Path(tmp)
        daemon = DaemonProcess(root, namespace_size="512MiB")
        _say(
            f"[1/4] starting dualbladed (file namespace {daemon.namespace_path}, uid {os.getuid()})"
        )
        t0 = time.perf_counter()
        daemon.start()
        _say(f"  ready in {time.perf_counter() - t0:.2f} s, gRPC socket {daemon.socket}")

        def connect(tenant: str, arena_bytes: int = 16 << 20) -> Client:
            return Client.connect(daemon.socket, tenant=tenant, arena_bytes=arena_bytes)

        ok = False
        try:
            _say("[2/4] a KV block: put, get into the shared arena, restart, restore")
            kv_block_roundtrip(daemon, connect)
            _say("[3/4] generation through DualBladeCache on the daemon")
            ok = run_generation(args, connect)
        finally:
            _say("[4/4] stopping dualbladed (SIGTERM)")
            code = daemon.terminate()
            _say(f"  exited with status {code}" + ("" if code == 0 else f"\n{daemon.log_tail()}"))
    if not ok or code != 0:
        _say("demo FAILED")
        return 1
    _say("demo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
