"""What fsck found: the report every check writes to, and how it names a record.

Checks collect problems here and never raise, so one run lists every problem at once; the report
and the progress callback are only touched on the calling thread (the data readers hand their
results back to it, see :mod:`.verify`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dualbladed.store.meta import ObjectRecord

#: ``progress(objects checked, objects to check)``; called on the calling thread
Progress = Callable[[int, int], None]


@dataclass
class FsckReport:
    namespace: str
    state_dir: str
    ok: bool = True
    objects: int = 0
    bytes: int = 0
    verified: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.ok = False
        self.errors.append(message)

    def render(self) -> str:
        lines = [
            f"fsck {self.namespace} (state {self.state_dir}): {'clean' if self.ok else 'PROBLEMS'}",
            f"  objects {self.objects}, bytes {self.bytes}, data verified {self.verified}",
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  error: {e}" for e in self.errors]
        return "\n".join(lines)


def record_name(rec: ObjectRecord) -> str:
    """How every message names an object: ``tenant:key``."""
    return f"{rec.tenant}:{rec.key!r}"
