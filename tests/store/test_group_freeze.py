"""The heap freeze that group commits trigger (:func:`dualbladed.store.group.note_installed`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from dualbladed.store import group


@pytest.fixture
def small_freeze(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(group, "FREEZE_EVERY", 10)
    monkeypatch.setattr(group, "_installed_since_freeze", 0)
    yield
    gc.unfreeze()  # leave the test process's collector as it was


def test_freezes_after_enough_installs_and_counts_again(small_freeze: None) -> None:
    gc.unfreeze()
    assert not group.note_installed(6)
    assert gc.get_freeze_count() == 0
    assert group.note_installed(4)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert not group.note_installed(9)  # the count starts again after a freeze
    assert gc.get_freeze_count() == frozen


def test_nothing_while_the_collector_is_disabled(small_freeze: None) -> None:
    gc.unfreeze()
    gc.disable()
    try:
        assert not group.note_installed(50)
        assert gc.get_freeze_count() == 0
    finally:
        gc.enable()
