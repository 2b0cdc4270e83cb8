"""``dbctl``: the admin CLI for dualbladed.

Online commands talk to the daemon's Admin service over its Unix socket (root or the admin group
only): ``status``, ``tenants``, ``extents [--tenant T]``, ``residency``, ``health`` (exit 1 while
the daemon reports a problem, for probes). Offline commands need no
daemon: ``devices`` (discovery with safety verdicts) and ``fsck`` (checks a stopped daemon's
state directory and namespace; non-zero exit on any problem).

Every command prints a human table by default and JSON with ``--json`` (the JSON shape is the
interface scripts depend on: keep keys stable). Numbers are JSON numbers, 64-bit ones included
(protobuf's own JSON mapping would print those as strings); an unset message is ``null``. That
conversion, the table-or-JSON switch and the residency tables live in
:mod:`dualblade_tools.dbctl_render` (``residency_dict`` and ``render_residency`` are still
importable from here); this module keeps the commands, the parser and the exit codes.

Like other Unix filters, dbctl dies quietly of SIGPIPE when its reader goes away
(``dbctl status --json | head``).
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from dualblade_tools.dbctl_render import RESIDENCY_ROWS as RESIDENCY_ROWS  # re-exported
from dualblade_tools.dbctl_render import emit, pb_dict, render_residency, residency_dict
from dualblade_tools.tables import format_bytes, print_table

Command = Callable[[argparse.Namespace], int]


def _client(args: argparse.Namespace) -> Any:
    # Admin calls need a session (identity comes from the handshake), not a data arena: the
    # light session keeps the client module (and its imports) out of a short dbctl run.
    from dualblade._session import AdminSession

    return AdminSession(args.socket, tenant="dbctl")


# -- online ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from dualblade.v1 import dualblade_pb2 as pb

    with _client(args) as c:
        reply = c.admin_call("Status", pb.StatusRequest())
    data = pb_dict(reply)
    data["residency"] = residency_dict(reply.residency) if reply.HasField("residency") else {}

    def render(d: dict[str, Any]) -> None:
        rows = [
            (
                "namespace",
                f"{d['namespace_path']} ({d['namespace_kind']}, uuid {d['namespace_uuid']})",
            ),
            ("block size", str(d["block_size"])),
            ("capacity", format_bytes(int(d["capacity_bytes"]))),
            ("free", format_bytes(int(d["free_bytes"]))),
            ("largest free extent", format_bytes(int(d["largest_free_bytes"]))),
            ("fragmentation", f"{d['fragmentation']:.3f}"),
            ("sessions", str(d["sessions"])),
            ("uptime", f"{float(d['uptime_s']):.0f} s"),
            ("state dir", d["state_dir"]),
            ("evictions", f"{d['evictions']} ({format_bytes(int(d['evicted_bytes']))})"),
            ("pinned hits", str(d["pins"])),
        ]
        for p in d["paths"]:
            rows.append(
                (f"path {p['path']}", f"{p['objects']} objects, {format_bytes(int(p['bytes']))}")
            )
        print_table(["field", "value"], rows)
        if d["metrics"]:
            print()
            print_table(
                ["tenant", "path", "op", "ops", "bytes", "errors", "mean ms"],
                [
                    (
                        m["tenant"],
                        m["path"],
                        m["op"],
                        m["ops"],
                        format_bytes(int(m["bytes"])),
                        m["errors"],
                        f"{float(m['latency']['sum_ms']) / max(int(m['ops']), 1):.3f}",
                    )
                    for m in d["metrics"]
                ],
            )

    return emit(args, data, render)


def cmd_tenants(args: argparse.Namespace) -> int:
    from dualblade.v1 import dualblade_pb2 as pb

    with _client(args) as c:
        data = pb_dict(c.admin_call("Tenants", pb.TenantsRequest()))["tenants"]

    def render(rows: list[dict[str, Any]]) -> None:
        print_table(
            ["tenant", "objects", "bytes", "quota", "sessions", "evictions", "pins", "paths"],
            [
                (
                    t["tenant"],
                    t["objects"],
                    format_bytes(int(t["bytes"])),
                    format_bytes(int(t["quota_bytes"])) if int(t["quota_bytes"]) else "unlimited",
                    f"{t['sessions']} ({t['admin_sessions']} admin)"
                    if t["admin_sessions"]
                    else t["sessions"],
                    t["evictions"],
                    t["pins"],
                    ", ".join(f"{p['path']}={format_bytes(int(p['bytes']))}" for p in t["paths"]),
                )
                for t in rows
            ],
        )

    return emit(args, data, render)


def _extent_pages(args: argparse.Namespace) -> Iterator[list[dict[str, Any]]]:
    """The daemon's extents, one page (one Extents call) at a time, at most ``--limit`` in all.

    The cursor is the last extent of the previous page, so neither the daemon nor dbctl ever
    holds more than a page, however many objects there are."""
    from dualblade.v1 import dualblade_pb2 as pb

    left = args.limit if args.limit > 0 else None
    after_tenant, after_key = "", b""
    with _client(args) as c:
        while left is None or left > 0:
            reply = c.admin_call(
                "Extents",
                pb.ExtentsRequest(
                    tenant=args.tenant or "",
                    limit=min(left, _EXTENTS_PAGE) if left is not None else _EXTENTS_PAGE,
                    after_tenant=after_tenant,
                    after_key=after_key,
                ),
            )
            page = [
                {
                    "tenant": e.tenant,
                    "key": e.key.decode("utf-8", "backslashreplace"),
                    "path": e.path,
                    "offset": e.offset,
                    "length": e.length,
                    "size": e.size,
                    "persistent": e.persistent,
                    "generation": e.generation,
                }
                for e in reply.extents
            ]
            if page:
                yield page
            if not reply.more or not reply.extents:
                return
            if left is not None:
                left -= len(page)
            after_tenant, after_key = reply.extents[-1].tenant, reply.extents[-1].key


#: extents asked for per call (the daemon caps a page at its own limit too)
_EXTENTS_PAGE = 4096
_EXTENT_COLUMNS = ("tenant", "key", "path", "offset", "length", "size", "persistent", "gen")


def cmd_extents(args: argparse.Namespace) -> int:
    """Streams: ``--json`` writes one JSON array element by element, ``--jsonl`` one object
    per line, the table one page at a time (columns sized by the first page). Each page is one
    write: on an unbuffered stdout (PYTHONUNBUFFERED, systemd, CI) a write per element is a
    system call per object."""
    out = sys.stdout
    if args.json or args.jsonl:
        first = True
        if not args.jsonl:
            out.write("[")
        for page in _extent_pages(args):
            parts = []
            for e in page:
                if args.jsonl:
                    parts.append(json.dumps(e, sort_keys=True) + "\n")
                else:
                    parts.append(("\n  " if first else ",\n  ") + json.dumps(e, sort_keys=True))
                first = False
            out.write("".join(parts))
            out.flush()
        if not args.jsonl:
            out.write("\n]\n" if not first else "]\n")
        return 0
    widths: list[int] | None = None
    for page in _extent_pages(args):
        rows = [
            [
                str(c)
                for c in (
                    e["tenant"],
                    e["key"],
                    e["path"],
                    e["offset"],
                    e["length"],
                    e["size"],
                    "yes" if e["persistent"] else "no",
                    e["generation"],
                )
            ]
            for e in page
        ]
        if widths is None:
            cells = [list(_EXTENT_COLUMNS), *rows]
            widths = [max(len(r[i]) for r in cells) for i in range(len(_EXTENT_COLUMNS))]
            print("  ".join(h.ljust(w) for h, w in zip(_EXTENT_COLUMNS, widths)).rstrip())
            print("  ".join("-" * w for w in widths))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        sys.stdout.flush()
    if widths is None:
        print("  ".join(_EXTENT_COLUMNS))
    return 0


def cmd_residency(args: argparse.Namespace) -> int:
    from dualblade.v1 import dualblade_pb2 as pb

    with _client(args) as c:
        reply = c.admin_call("Residency", pb.ResidencyRequest())
    data = residency_dict(reply.status) if reply.HasField("status") else {}
    return emit(args, data, render_residency)


# -- offline --------------------------------------------------------------------------------


def cmd_devices(args: argparse.Namespace) -> int:
    from dualbladed.namespace.discovery import discover

    devices = discover()
    data = [asdict(d) for d in devices]

    def render(rows: list[dict[str, Any]]) -> None:
        print_table(
            ["device", "kind", "size", "lbs", "model", "serial", "verdict"],
            [
                (
                    d["path"],
                    d["kind"],
                    format_bytes(int(d["size"])),
                    d["logical_block_size"],
                    d.get("model") or "-",
                    d.get("serial") or "-",
                    "ok" + (" (ours)" if d["verdict"]["ours"] else "")
                    if d["verdict"]["ok"]
                    else "refused: " + "; ".join(d["verdict"]["reasons"]),
                )
                for d in rows
            ],
        )

    return emit(args, data, render)


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 while the daemon serves without problems, 1 when it reports any (for probes)."""
    from dualblade.v1 import dualblade_pb2 as pb

    with _client(args) as c:
        reply = c.admin_call("Health", pb.HealthRequest())
    data = {"serving": reply.serving, "problems": list(reply.problems)}

    def render(d: dict[str, Any]) -> None:
        print("serving" if d["serving"] else "NOT serving")
        for problem in d["problems"]:
            print(f"  problem: {problem}")

    emit(args, data, render)
    return 0 if reply.serving else 1


def _fsck_progress(enabled: bool) -> Callable[[int, int], None] | None:
    """Progress on stderr: rewritten in place on a terminal, a line per ~2 s otherwise."""
    if not enabled:
        return None
    tty = sys.stderr.isatty()
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < (0.2 if tty else 2.0):
            return
        last[0] = now
        pct = 100.0 * done / total if total else 100.0
        text = f"fsck: verified {done}/{total} objects ({pct:.0f}%)"
        if tty:
            sys.stderr.write("\r" + text + ("\n" if done >= total else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    return show


def cmd_fsck(args: argparse.Namespace) -> int:
    from dualbladed.store.fsck import fsck

    report = fsck(
        args.namespace,
        args.state_dir,
        verify_data=not args.no_data,
        workers=args.workers,
        progress=_fsck_progress(args.progress or sys.stderr.isatty()),
    )
    emit(args, asdict(report), lambda r: print(report.render()))
    return 0 if report.ok else 1


# -- argument parsing -----------------------------------------------------------------------


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` ($COLUMNS, else the terminal's width, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized without importing ``shutil``.

    argparse builds a formatter for every ``add_argument`` (to check the metavar) and sizes it
    with ``shutil.get_terminal_size``; importing shutil (and the compression modules it pulls
    in) was ~6 ms of every ``dbctl status`` (issue 14). Same width rule, from :mod:`os`.
    """

    def __init__(self, prog: str, **kw: Any) -> None:
        kw.setdefault("width", _terminal_columns() - 2)
        super().__init__(prog, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dbctl", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter
    )
    p.add_argument("--socket", help="the daemon's gRPC socket (default: the daemon's default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = p.add_subparsers(
        dest="command",
        required=True,
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_HelpFormatter),
    )
    sub.add_parser("status", help="namespace, space, sessions, metrics").set_defaults(fn=cmd_status)
    sub.add_parser("tenants", help="tenants with usage and quotas").set_defaults(fn=cmd_tenants)
    ex = sub.add_parser("extents", help="every object's extent, streamed in (tenant, key) order")
    ex.add_argument("--tenant", help="only this tenant (uid/label)")
    ex.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    ex.add_argument("--jsonl", action="store_true", help="one JSON object per line")
    ex.set_defaults(fn=cmd_extents)
    sub.add_parser("residency", help="bytes per path, budget, signals, migrations").set_defaults(
        fn=cmd_residency
    )
    sub.add_parser(
        "devices", help="NVMe namespaces and loop devices with safety verdicts"
    ).set_defaults(fn=cmd_devices)
    sub.add_parser("health", help="serving or not, with the problems (exit 1 on any)").set_defaults(
        fn=cmd_health
    )
    fk = sub.add_parser("fsck", help="offline consistency check of a stopped daemon's state")
    fk.add_argument("--state-dir", required=True)
    fk.add_argument("--namespace", required=True)
    fk.add_argument("--no-data", action="store_true", help="skip reading data to verify checksums")
    fk.add_argument("--workers", type=int, default=8, help="data reads in flight (threads)")
    fk.add_argument(
        "--progress", action="store_true", help="show progress on stderr (default: on a terminal)"
    )
    fk.set_defaults(fn=cmd_fsck)
    for name in ("status", "tenants", "extents", "residency", "devices", "health", "fsck"):
        sub.choices[name].add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return p


def _error_types() -> tuple[type[BaseException], ...]:
    """The SDK's error base, and the daemon's one where it is installed (offline commands).

    Called only once a command failed: an online command does not import the daemon package.
    """
    from dualblade import errors

    types: list[type[BaseException]] = [errors.DualbladeError]
    try:
        from dualbladed.errors import DualbladeError as DaemonError
    except ImportError:  # an SDK-only install: fsck is unavailable anyway
        pass
    else:
        types.append(DaemonError)
    return tuple(types)


def _os_message(command: str, err: OSError) -> str:
    """One line for a system error; permission problems say what to do about them."""
    where = f" {err.filename}" if err.filename is not None else ""
    text = f"dbctl: {command}: {err.strerror or err}:{where}".rstrip(":")
    if err.errno in (errno.EACCES, errno.EPERM):
        text += " (run dbctl as root, or as the daemon's user or a member of its admin group)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on success, 1 when a command reports problems (fsck, health), 2 on any error.

    Errors are one line on stderr, never a traceback: the daemon's and the SDK's typed errors
    with their status code, system errors (permissions above all) with the path concerned.
    """
    if argv is None:  # run as the program, not called as a library
        # A closed pipe ends dbctl the way it ends cat or grep: by SIGPIPE, with no traceback.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    try:
        rc = int(args.fn(args))
    except Exception as err:  # the typed errors are looked up only now: see _error_types
        if isinstance(err, _error_types()):
            code = getattr(err, "code", None) or getattr(err, "grpc_code", "UNKNOWN")
            print(f"dbctl: {code}: " + str(err).replace("\n", "; "), file=sys.stderr)
        elif isinstance(err, OSError):
            print(_os_message(args.command, err), file=sys.stderr)
        else:
            raise
        rc = 2
    if argv is None:
        _exit_now(rc)
    return rc


def _exit_now(rc: int) -> None:
    """End the program without the interpreter's teardown.

    By now the command has closed its session (the ``with`` around every Admin call) and
    written its output; what is left is freeing every module's objects one by one, grpc's and
    protobuf's included: ~60 ms, a fifth of a ``dbctl status`` (strace on the 2-vCPU VM, issue
    14). Only the output must outlive us, so flush it (a reader gone away ends us by SIGPIPE, as
    before) and leave with ``os._exit``, which also skips atexit handlers: dbctl registers none.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
