"""POSIX access ACLs, set by the file's owner: how the daemon lets one uid (or group) in.

Why ACLs and not chown: the daemon normally runs as its own unprivileged user under systemd with
``SystemCallFilter=~@privileged`` (no chown at all) and no CAP_CHOWN, but the owner of a file may
always set its ACL. So the per-uid socket directories and the admin lane stay the daemon's own,
and an ACL entry names who else may enter. A bonus over giving the directory away: the user can
traverse it and connect, but not create, rename or delete anything in it.

The ``system.posix_acl_access`` extended attribute holds the ACL in the kernel's format
(<linux/posix_acl_xattr.h>): a little-endian u32 version (2), then one entry per line of the
ACL, ``u16 tag | u16 perm | u32 id``, sorted by tag then id. A minimal ACL with named entries
needs USER_OBJ, GROUP_OBJ, a MASK (the upper bound of every group-class entry, shown as the
mode's group bits) and OTHER. Where the filesystem has no ACLs the kernel answers EOPNOTSUPP;
:func:`grant` then returns False and the caller decides.
"""

from __future__ import annotations

import errno
import os
import struct

__all__ = ["ACL_XATTR", "R", "W", "X", "grant", "read_named_entries"]

ACL_XATTR = "system.posix_acl_access"
R, W, X = 4, 2, 1

_VERSION = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF


def _blob(owner: int, users: dict[int, int], groups: dict[int, int]) -> bytes:
    mask = 0
    for perm in (*users.values(), *groups.values()):
        mask |= perm
    entries = [(_USER_OBJ, owner, _UNDEFINED)]
    entries += [(_USER, perm, uid) for uid, perm in sorted(users.items())]
    entries.append((_GROUP_OBJ, 0, _UNDEFINED))
    entries += [(_GROUP, perm, gid) for gid, perm in sorted(groups.items())]
    entries += [(_MASK, mask, _UNDEFINED), (_OTHER, 0, _UNDEFINED)]
    return _VERSION.pack(2) + b"".join(_ENTRY.pack(*e) for e in entries)


def grant(
    target: int | str,
    *,
    owner: int,
    users: dict[int, int] | None = None,
    groups: dict[int, int] | None = None,
) -> bool:
    """Replace ``target``'s ACL (an fd, or a path that is not a link): the owner gets ``owner``
    permissions, the named users and groups theirs, the owning group and others nothing.

    False where the filesystem has no ACLs; other OSErrors propagate.
    """
    try:
        os.setxattr(target, ACL_XATTR, _blob(owner, users or {}, groups or {}))
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    return True


def read_named_entries(target: int | str) -> dict[str, dict[int, int]]:
    """``{"users": {uid: perm}, "groups": {gid: perm}}`` of ``target``'s ACL (for checks)."""
    raw = os.getxattr(target, ACL_XATTR)
    out: dict[str, dict[int, int]] = {"users": {}, "groups": {}}
    for off in range(_VERSION.size, len(raw), _ENTRY.size):
        tag, perm, ident = _ENTRY.unpack_from(raw, off)
        if tag == _USER:
            out["users"][ident] = perm
        elif tag == _GROUP:
            out["groups"][ident] = perm
    return out
