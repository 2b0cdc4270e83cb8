"""Directories the daemon trusts: sshd ``StrictModes`` for the socket and state directories.

Why: whoever can write to the directory holding ``handshake.sock`` can unlink it and bind their
own socket in its place, impersonating the daemon to every client (root's included); whoever can
write to the state directory can swap the metadata or the slabs. So, before anything is bound or
opened, every directory from ``/`` down to each of those directories must be

* owned by root or by the daemon's own uid, and
* writable by neither its group nor others,

with one exception: an *ancestor* (never the directory itself) may be world- or group-writable
when it is sticky (``+t``, like ``/tmp``) and owned by root or the daemon's uid, because the
sticky bit stops others from renaming or removing entries they do not own. This is sshd's
``safe_path`` rule plus the sticky exception it never needs; group-writable directories are
refused even when the group is a user-private one (``chmod g-w`` fixes it) -- one rule that needs
no group lookup.

Missing directories are created here, top-down, with mode 0750 (``chmod``'d after ``mkdir`` so
the umask cannot widen or narrow it), owned by the daemon's uid. The 0750 matches the systemd
unit's ``RuntimeDirectoryMode=``/``StateDirectoryMode=``: clients of other uids reach the sockets
through the directory's group (the admin opens it), never through "other".

Symbolic links: the path is resolved first (``realpath``, as sshd does) and the resolved path is
walked with ``lstat``; a component that turns into a symlink during the walk is refused. The check
is a start-up check (time of check, time of use): it protects against a directory that is unsafe
when the daemon starts; the safe ancestors then keep it safe, since nobody else may change them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from dualbladed.errors import UnsafeDirectory

#: mode of the directories the daemon creates itself
DIR_MODE = 0o750


def trusted_uids() -> frozenset[int]:
    """Owners a safe directory may have: root and the daemon's effective uid."""
    return frozenset({0, os.geteuid()})


def _problem(st: os.stat_result, *, is_target: bool, trusted: frozenset[int]) -> str | None:
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid not in trusted:
        owners = " or ".join(f"uid {u}" for u in sorted(trusted))
        return f"owned by uid {st.st_uid}; it and every parent must be owned by {owners}"
    writable = st.st_mode & 0o022
    if not writable:
        return None
    if not is_target and st.st_mode & stat.S_ISVTX:
        return None  # a sticky parent such as /tmp: others cannot move our entry
    who = "others" if st.st_mode & 0o002 else "its group"
    return f"writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}); chmod go-w it"


def check_dir(path: str | os.PathLike[str], *, create: bool = True) -> Path:
    """Make sure ``path`` is a directory nobody but root and the daemon can tamper with.

    Creates what is missing (mode :data:`DIR_MODE`) when ``create``. Returns the resolved path.

    Raises:
        UnsafeDirectory: naming the offending directory (``path`` or one of its parents) and
            the problem; nothing is created below an unsafe component.
    """
    target = Path(os.path.realpath(os.path.abspath(path)))
    trusted = trusted_uids()
    parts = target.parts
    current = Path(parts[0])
    for i in range(len(parts)):
        if i:
            current = current / parts[i]
        is_target = i == len(parts) - 1
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if not create:
                raise UnsafeDirectory(str(current), "does not exist") from None
            st = _make(current)
        except OSError as e:
            raise UnsafeDirectory(str(current), f"cannot stat it: {e.strerror}") from e
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeDirectory(str(current), "became a symbolic link while being checked")
        problem = _problem(st, is_target=is_target, trusted=trusted)
        if problem is not None:
            where = "" if is_target else f" (a parent of {target})"
            raise UnsafeDirectory(f"{current}{where}", problem)
    return target


def _make(path: Path) -> os.stat_result:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass  # raced with someone: the lstat below judges what is there now
    except OSError as e:
        raise UnsafeDirectory(str(path), f"cannot create it: {e.strerror}") from e
    else:
        try:
            os.chmod(path, DIR_MODE)  # exact mode, whatever the umask
        except OSError as e:
            raise UnsafeDirectory(str(path), f"cannot chmod it: {e.strerror}") from e
    return os.lstat(path)


def check_dirs(paths: Iterable[str | os.PathLike[str]]) -> None:
    """:func:`check_dir` each distinct directory, in a stable order."""
    for path in sorted({os.path.abspath(p) for p in paths}):
        check_dir(path)
