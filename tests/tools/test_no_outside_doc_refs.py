"""Comments stand on their own: no tracked file cites a document that is not in the repository.

The notes behind the design (kept outside the tree) are summarised where they are
used; a pointer to them would be a dead end for every reader of a clone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_DOCS = ("api" + "-facts",)  # split so this file does not match itself


def test_no_tracked_file_cites_a_document_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    assert len(files) > 50, "git ls-files listed almost nothing: not a checkout?"
    hits = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        if not path.is_file():
            continue
        text = path.read_bytes()
        hits += [f"{name.decode()}: {doc}" for doc in OUTSIDE_DOCS if doc.encode() in text]
    assert hits == []
