"""Who may do what: tenants, quotas and the admin role.

A tenant is ``"<uid>/<label>"``: the uid comes from SO_PEERCRED at the handshake (the kernel's
word, not the client's), the label is chosen by the client and only scopes objects *within* that
uid. So two processes of one user can share a tenant, and no label lets one user reach another
user's objects.

Admin calls (dbctl) are allowed to uid 0 and to members of the configured admin group: the
peer's primary gid, its supplementary groups (read from ``/proc/<pid>/status`` at handshake
time, while the pidfd pins the process) or its user name listed in the group.
"""

from __future__ import annotations

import grp
import pwd

from dualbladed.errors import PermissionDenied


def supplementary_gids(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def is_admin(uid: int, gid: int, pid: int, admin_group: str | None) -> bool:
    if uid == 0:
        return True
    if not admin_group:
        return False
    try:
        group = grp.getgrnam(admin_group)
    except KeyError:
        return False
    if gid == group.gr_gid or group.gr_gid in supplementary_gids(pid):
        return True
    try:
        return pwd.getpwuid(uid).pw_name in group.gr_mem
    except KeyError:
        return False


def require_admin(uid: int, gid: int, pid: int, admin_group: str | None) -> None:
    if not is_admin(uid, gid, pid, admin_group):
        raise PermissionDenied(
            f"admin calls need root or membership in group {admin_group!r}; uid {uid} has neither"
        )
