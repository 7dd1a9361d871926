"""The client's key names under ``@<org>/``, and which track records that name none are of.

The layout is :mod:`autoresearchd.ensue.keys`'s (drawn in the package docstring); this
module only spells it for one org and one primary track. Nothing here does I/O.
"""

from __future__ import annotations

import re

from autoresearchd.ensue import keys
from autoresearchd.ensue.keys import short_hash, slug
from autoresearchd.models import Result


class Keyspace:
    """The keys of one org, as the client names them.

    ``primary_track`` is the track whose bests use the community's bare ``best/`` keys;
    ``org_track_declared`` says the operator named it as the org's own track, so the
    community's records (which name no track) are of it; otherwise they are of the track
    named after the org.
    """

    def __init__(self, org: str, primary_track: str, *, org_track_declared: bool) -> None:
        self.org = org
        self.root = f"@{org}/"
        self.primary_track = primary_track
        #: The track of records that name none: the community's, the org's own.
        self.org_track = primary_track if org_track_declared else org

    @property
    def declared_track(self) -> str | None:
        """The track the operator declared the org's own (whose bests name no track), if any."""
        return self.org_track if self.org_track == self.primary_track else None

    def full(self, name: str) -> str:
        """A key name from a reply as a full name: community servers answer org-relative."""
        return keys.full_name(self.org, name)

    def tail(self, key: str, prefix: str) -> str:
        """What follows ``prefix`` (a full-name folder) in ``key``."""
        return key[len(prefix) :] if key.startswith(prefix) else key

    def best_base(self, track: str, tier: str | None) -> str:
        return self.root + keys.best_base(track, self.primary_track, tier)

    def agent_best(self, result: Result) -> str:
        return self.root + keys.agent_best(slug(result.agent_id), result.track, self.primary_track)

    def claim(self, track: str, sha256: str) -> str:
        return f"{self.root}claims/{slug(track)}--{slug(sha256, 64)[:12]}"

    def runs(self, track: str, sha256: str) -> str:
        return f"{self.root}runs/{slug(track)}--{slug(sha256, 64)}"

    def published(self, result_id: str) -> str:
        """The marker that maps a result id to its key (the key's slug is the description's)."""
        return f"{self.root}published/{slug(result_id)}--{short_hash(result_id, 6)}"

    def results(self, result: Result) -> tuple[str, str]:
        """The keys a result may take: the community's ``id6`` form, then a longer hash."""
        head = f"{self.root}results/{slug(result.agent_id)}--{slug(result.description)}--"
        return head + short_hash(result.id, 6), head + short_hash(result.id, 16)

    def note(self, kind: str, key: str) -> str:
        safe = re.fullmatch(r"[A-Za-z0-9._~-]{1,200}", key)
        return f"{self.root}{kind}/{key if safe else slug(key) + '--' + short_hash(key, 6)}"
