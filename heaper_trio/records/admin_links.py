"""What using an admin link (``python -m heaper_trio admin-link``) comes to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from heaper_trio.records import User


class AdminLinkProblem(str, Enum):
    """Why a link cannot sign anyone in. Values double as error codes."""

    unknown = "admin_link_unknown"
    used = "admin_link_used"
    expired = "admin_link_expired"
    not_admin = "admin_link_not_admin"  # its account is no longer an approved admin


@dataclass(frozen=True)
class AdminLinkOutcome:
    problem: AdminLinkProblem | None
    user: User | None = None  # the admin signed in (a refresh token row was stored)
