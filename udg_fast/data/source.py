"""Where a dataset's raw files are, and the fingerprint (sha256 per file) the cache key uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import cache
from .formats import Member


@dataclass
class Source:
    """The raw files of one dataset.

    Args:
        fingerprint: ``{file name: sha256}``; part of the cache key. Computed eagerly for local
            files, or known in advance for a pinned download.
        kind: which parser reads the files.
        description: a human-readable origin (a path, or "from the package registry").
        members: role -> :class:`Member` (e.g. ``inter``, ``user``, ``item``), or None when the
            files are still to be fetched by ``fetch``.
        fetch: ``fetch(progress) -> members`` for a source obtained on demand.
    """

    fingerprint: dict[str, str]
    kind: str
    description: str
    members: dict[str, Member] | None = None
    fetch: Callable | None = None
    options: dict = field(default_factory=dict)

    @classmethod
    def from_members(cls, members: dict[str, Member], kind: str, description: str, progress=None) -> "Source":
        fp = {}
        seen = {}
        for role, m in members.items():
            if m.path not in seen:
                seen[m.path] = cache.file_sha256(m.path, progress)
            label = m.label if m.member is None else f"{m.path.name}:{m.member}"
            fp[f"{role}:{label.rsplit('/', 1)[-1]}"] = seen[m.path]
        return cls(fingerprint=fp, kind=kind, description=description, members=members)

    def resolve(self, progress=None) -> dict[str, Member]:
        if self.members is None:
            assert self.fetch is not None
            self.members = self.fetch(progress)
        return self.members
