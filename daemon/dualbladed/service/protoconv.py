"""Typed snapshot -> protobuf message, field by field, by name: :func:`to_pb`.

The daemon's views (``inventory.StatusView``, ``arbiter.snapshot.*``, ``ObjectInfo``) were
shaped after the ``dualblade.v1`` messages, so converting one was a list of ``name=src.name``
lines per message, repeated in the Admin servicer and the residency conversion. :func:`to_pb`
walks the message's own descriptor instead and stays strict, so that a field cannot be dropped
or misnamed silently when either side changes:

- every field of the message is filled from the attribute of the same name, unless it is
  given explicitly (a converted sub-message, a renamed or computed value);
- a field the source lacks and nobody gave raises ``AttributeError``, and a given name the
  message lacks raises ``TypeError``;
- a message-typed field must be given (converted by the caller), never copied raw;
- ``None`` leaves a field unset: from the source only where the field has presence (an
  ``optional`` scalar or a message: "not known yet" stays distinguishable from zero), from
  ``given`` for any field (an explicit "not sent").
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from google.protobuf.message import Message

__all__ = ["to_pb"]

M = TypeVar("M", bound=Message)


def to_pb(message: type[M], src: object, /, **given: Any) -> M:
    """A ``message`` with every field taken from ``given`` or else from ``src``'s attribute of
    the same name (see the module docstring for the rules)."""
    plan, names = _plan(message)
    if not given.keys() <= names:
        unknown = ", ".join(sorted(given.keys() - names))
        raise TypeError(f"{message.__name__} has no field {unknown}")
    values: dict[str, Any] = {}
    for name, is_message, has_presence, repeated_scalar in plan:
        if name in given:
            value = given[name]
        else:
            if is_message:
                raise TypeError(f"{message.__name__}.{name} is a message: give it converted")
            value = getattr(src, name)
            if value is None and not has_presence:
                raise TypeError(f"{message.__name__}.{name} has no presence and cannot be None")
        if value is None:
            continue
        values[name] = list(value) if repeated_scalar else value
    return message(**values)


_Plan = tuple[tuple[tuple[str, bool, bool, bool], ...], frozenset[str]]


@functools.cache
def _plan(message: type[Message]) -> _Plan:
    """Per message class, once: each field's name, kind and presence (descriptor walks are
    slow next to the copy itself; Extents converts up to 4096 rows per page)."""
    fields = tuple(
        (f.name, f.message_type is not None, f.has_presence, f.is_repeated and not f.message_type)
        for f in message.DESCRIPTOR.fields
    )
    return fields, frozenset(f[0] for f in fields)
