"""How dbctl turns Admin replies into output: protobuf messages as JSON-ready data, the
``--json``-or-table switch every command shares, and the residency arbiter's tables.

Why a module of its own: :mod:`dualblade_tools.dbctl` is the command line (argument parsing,
one ``cmd_*`` per Admin call, exit codes, one-line errors); what is here is the output shape,
which scripts depend on (``--json`` keys must stay stable) and which other code reuses: the
residency rendering is shared by ``dbctl status`` and ``dbctl residency`` and is tested on its
own against a real arbiter (``tests/service/test_residency_status.py``). The residency part is
by far the largest renderer (three tables, every field may be "not known yet"), hence its place
here rather than beside the small per-command tables that stay in dbctl.

JSON rules: numbers are JSON numbers, 64-bit ones included (protobuf's own JSON mapping would
print those as strings); an unset message or ``optional`` field is ``null``; enums by name;
bytes as UTF-8 with backslash escapes; deprecated fields left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from dualblade_tools.tables import format_bytes, print_table

__all__ = ["RESIDENCY_ROWS", "emit", "pb_dict", "render_residency", "residency_dict"]


#: How to convert one field: (name, repeated, optional, converter); converter None for a
#: value that already is JSON's own type (int of any width, float, bool, str).
_FieldPlan = tuple[str, bool, bool, Callable[[Any], Any] | None]
_PLANS: dict[str, tuple[_FieldPlan, ...]] = {}


def _bytes_text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def _converter(field: FieldDescriptor) -> Callable[[Any], Any] | None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return pb_dict
    if field.type == FieldDescriptor.TYPE_ENUM:
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda number: names.get(number, number)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bytes_text
    return None


def _plan(desc: Descriptor) -> tuple[_FieldPlan, ...]:
    """The fields of one message type, worked out once per type and process.

    Why cached: a Status reply carries hundreds of small messages (the arbiter's last 256
    migrations, histograms); asking each field's descriptor again for each of them (options,
    labels, presence) was 12-25 ms of a ~0.2 s ``dbctl status`` (issue 14).
    """
    plan = _PLANS.get(desc.full_name)
    if plan is None:
        plan = tuple(
            (
                field.name,
                field.is_repeated,
                field.has_presence and not field.is_repeated,
                _converter(field),
            )
            for field in desc.fields
            # has_options first: GetOptions builds an options message (and imports its module)
            if not (field.has_options and field.GetOptions().deprecated)
        )
        _PLANS[desc.full_name] = plan
    return plan


def pb_dict(msg: Message) -> dict[str, Any]:
    """A message as JSON-ready data, by field name, every field present.

    Unlike ``MessageToDict`` this keeps 64-bit integers as numbers. An unset message field or
    ``optional`` scalar is None; deprecated fields are left out (they are no longer filled).
    """
    out: dict[str, Any] = {}
    for name, repeated, optional, convert in _plan(msg.DESCRIPTOR):
        value = getattr(msg, name)
        if repeated:
            out[name] = list(value) if convert is None else [convert(v) for v in value]
        elif optional and not msg.HasField(name):
            out[name] = None
        else:
            out[name] = value if convert is None else convert(value)
    return out


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], None]) -> int:
    """``data`` as JSON on stdout with ``--json``, else ``render(data)``; returns exit code 0."""
    if args.json:
        # One write: json.dump writes token by token, a system call each on an unbuffered
        # stdout (PYTHONUNBUFFERED, as under systemd or CI): ~300 of them for a status.
        text = json.dumps(data, indent=2, sort_keys=True, default=_json_default)
        sys.stdout.write(text + "\n")
    else:
        render(data)
    return 0


def _json_default(obj: Any) -> Any:
    if is_dataclass(obj):
        return asdict(obj)  # type: ignore[arg-type]
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def residency_dict(msg: Message) -> dict[str, Any]:
    """A ``ResidencyStatus`` in dbctl's JSON shape: tenants keyed by name, moves ``from``/``to``."""
    data = pb_dict(msg)
    data["tenants"] = {t.pop("tenant"): t for t in data["tenants"]}
    for m in data["migrations"]:
        m["from"], m["to"] = m.pop("src"), m.pop("dst")
    return data


#: how many of the arbiter's recent migrations the table shows (--json has them all)
RESIDENCY_ROWS = 20


def _size_or(value: Any, none: str = "-") -> str:
    return none if value is None else format_bytes(int(value))


def _gbps(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} GB/s"


def _feedback_rows(fb: dict[str, Any] | None) -> list[tuple[str, str]]:
    """What the adaptive arbiter learned on its last tick (``ResidencyStatus.feedback``)."""
    if fb is None:
        return [("learned", "nothing yet")]
    split = fb["pagecache_fraction"]
    hit = fb["hit_ratio"]
    refaults = fb["refault_bytes_per_s"]
    return [
        (
            "learned cap",
            f"{format_bytes(fb['cap'])} (ceiling {format_bytes(fb['ceiling'])}, "
            f"room {format_bytes(fb['room'])})",
        ),
        ("  pressure", fb["pressure"] or "none"),
        (
            "  refaults / hit ratio",
            f"{'-' if refaults is None else format_bytes(int(refaults)) + '/s'} / "
            f"{'-' if hit is None else f'{hit:.2f}'}",
        ),
        (
            "  read pagecache / direct",
            f"{_gbps(fb['pagecache_read_gbps'])} / {_gbps(fb['direct_read_gbps'])}",
        ),
        (
            "  write pagecache / direct",
            f"{_gbps(fb['pagecache_write_gbps'])} / {_gbps(fb['direct_write_gbps'])}",
        ),
        ("  split (page-cache share)", "off" if split is None else f"{split:.2f}"),
        (
            "  write bursts go to",
            fb["write_path"] + (" (burst now: migrations wait)" if fb["write_burst"] else ""),
        ),
    ]


def render_residency(d: dict[str, Any]) -> None:
    """The arbiter's status as three tables: tenants, budget and signals, migrations.

    ``d`` is :func:`residency_dict`'s output: every key is present; None means "not known yet".
    """
    if not d:
        print("no residency arbiter")
        return
    tenants = d["tenants"]
    print_table(
        ["tenant", "pagecache", "direct", "share", "weight"],
        [
            (
                t,
                format_bytes(v["pagecache"]),
                format_bytes(v["direct"]),
                format_bytes(v["share"]),
                f"{v['weight']:g}",
            )
            for t, v in sorted(tenants.items())
        ]
        or [("(no objects)", "-", "-", "-", "-")],
    )
    budget = d["budget"] or dict.fromkeys(
        ("total", "raw", "effective_available", "reserve", "hysteresis", "pagecache_resident")
    )
    sig = d["signals"] or dict.fromkeys(
        ("mem_available", "mem_total", "cgroup_version", "psi_some_avg10", "psi_full_avg10")
    )
    psi, totals, pc = d["psi"], d["totals"], d["pagecache"]
    cg = sig["cgroup_version"]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value}"

    rows = [
        ("mode", d["mode"]),
        ("page-cache budget", _size_or(budget["total"], "none yet")),
        ("  from this tick", _size_or(budget["raw"])),
        ("  effective available", _size_or(budget["effective_available"])),
        ("  reserve", _size_or(budget["reserve"])),
        ("  hysteresis", _size_or(budget["hysteresis"])),
        ("our page-cache footprint", _size_or(budget["pagecache_resident"])),
        (
            "MemAvailable / MemTotal",
            f"{_size_or(sig['mem_available'])} / {_size_or(sig['mem_total'])}",
        ),
        (
            "cgroup" + (f" v{cg}" if cg else ""),
            "none"
            if not cg
            else f"limit {_size_or(sig['cgroup_limit'], 'unlimited')}, "
            f"usage {_size_or(sig['cgroup_usage'])}, cache {_size_or(sig['cgroup_cache'])}",
        ),
        (
            "PSI some/full avg10",
            f"{pct(sig['psi_some_avg10'])}% / {pct(sig['psi_full_avg10'])}%"
            f" (triggers: {psi['mode'] or 'off'}, {psi['events']} events)",
        ),
        (
            "on the paths",
            f"pagecache {format_bytes(totals['pagecache_bytes'])}, "
            f"direct {format_bytes(totals['direct_bytes'])}",
        ),
        (
            "migrations",
            f"{totals['migrations']} ({totals['failed_migrations']} failed), "
            f"demoted {format_bytes(totals['demoted_bytes'])}, "
            f"promoted {format_bytes(totals['promoted_bytes'])}, "
            f"cap {format_bytes(d['migration_bytes_per_s'])}/s",
        ),
        (
            "page-cache refusals",  # its cap or the disk floor (the daemon logs each onset)
            f"{totals['pagecache_refusals']}"
            + (f", now: {pc['refusing']}" if pc and pc["refusing"] else ""),
        ),
        ("ticks", f"{d['ticks']} every {d['tick_s']} s"),
        *_feedback_rows(d.get("feedback")),
    ]
    print()
    print_table(["residency", "value"], rows)
    moves = d["migrations"][-RESIDENCY_ROWS:]
    if moves:
        print()
        print_table(
            ["time", "tenant", "key", "move", "bytes", "ms", "result"],
            [
                (
                    time.strftime("%H:%M:%S", time.localtime(m["time"])),
                    m["tenant"],
                    m["key"],
                    f"{m['from']} -> {m['to']}",
                    format_bytes(m["bytes"]),
                    f"{m['ms']:.1f}",
                    "ok" if m["ok"] else f"failed: {m['error'] or '?'}",
                )
                for m in moves
            ],
        )
