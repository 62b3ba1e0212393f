"""What a stored change did to a block: one rule for the document service (local live
subscribers) and for the PostgreSQL engine (the announcement its commit sends to the other
processes), so both name the same change alike."""

from __future__ import annotations

from enum import StrEnum


class ChangeKind(StrEnum):
    """What a stored change did to a block, as live subscribers and other processes hear it."""

    created = "created"
    changed = "changed"
    deleted = "deleted"  # moved to the trash
    restored = "restored"  # out of the trash
    purged = "purged"  # gone for good
    heap_deleted = "heap_deleted"


def change_kind(*, created: bool, was_deleted: bool, now_deleted: bool) -> ChangeKind:
    """The kind of a committed edit: a new block is ``created`` whatever it holds; otherwise
    entering or leaving the trash (``meta_v0.deleted_at`` set or cleared) says it."""
    if created:
        return ChangeKind.created
    if now_deleted and not was_deleted:
        return ChangeKind.deleted
    if was_deleted and not now_deleted:
        return ChangeKind.restored
    return ChangeKind.changed
