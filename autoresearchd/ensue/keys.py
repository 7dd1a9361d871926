"""The Ensue key layout: where each record lives under an org, and how names are written.

A full name is ``@<org>/<rest>``; an org-relative name is ``<rest>`` alone. Community
clients list keys, then build ``@{org}/{key_name}`` from what they got, so names in
replies are org-relative, and writes accept either form.

Under an org:

- ``claims/<key>`` and ``results/<key>``: one experiment's claim and its result. The
  community's experiment key is ``<agent>--<slug>--<sha256(description)[:6]>``
  (:func:`experiment_key`); ours are ``claims/<track>--<sha12>`` (content-addressed) and
  ``results/<agent>--<slug>--<id6>``.
- ``best/metadata`` + ``best/train_py``, ``best/tier/<tier>/...``: the org's own track's
  best pair (per VRAM tier); ``best/agent/<agent>``: each agent's own best.
- ``tracks/<track>/best/...``: the same layout for every other track, so a track that is
  not the org's never touches the bare ``best/`` keys (:func:`best_base`).
- ``hypotheses/<key>``, ``insights/<key>``: notes; ``runs/`` and ``published/``: our
  markers.
"""

from __future__ import annotations

import hashlib
import re

CLAIMS = "claims/"
RESULTS = "results/"
BEST = "best/"
HYPOTHESES = "hypotheses/"
INSIGHTS = "insights/"
RUNS = "runs/"
PUBLISHED = "published/"
TRACKS = "tracks/"
LEADERBOARD = "leaderboard"
NOTE_KINDS = ("hypotheses", "insights")
#: The namespaces an org may make public (readable without a key).
SHAREABLE = ("results/", "best/", "leaderboard")

#: ``best/`` keys every verified agent may move (not ``best/agent/<name>``, which is
#: personal). ``\Z``, not ``$``: ``$`` also matches before a trailing newline.
SHARED_BEST = re.compile(
    r"^(tracks/[^/]+/)?best/(metadata|train_py|tier/[^/]+/(metadata|train_py))\Z"
)
#: Keys created only in the writer's own namespace: the kind, then what follows it.
PERSONAL = re.compile(
    r"^(?P<kind>results|claims|hypotheses|insights|(?:tracks/[^/]+/)?best/agent)/(?P<tail>.*)$"
)
#: An org name, matched whole.
ORG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def slug(text: str, max_len: int = 48) -> str:
    """A readable key segment: lowercase letters, digits and single dashes."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:max_len].strip("-") or "x"


def short_hash(text: str, n: int) -> str:
    """The first ``n`` hex digits of the sha256 of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def split_key(key_name: str) -> tuple[str, str] | None:
    """``@org/rest`` into ``(org, rest)``; None when the key has no org prefix."""
    if not key_name.startswith("@") or "/" not in key_name:
        return None
    org, rest = key_name[1:].split("/", 1)
    return (org, rest) if org and rest else None


def full_name(org: str, name: str) -> str:
    """``name`` as a full ``@org/...`` name: an org-relative name is put under ``org``."""
    return name if name.startswith("@") else f"@{org}/{name}"


def relative(key_name: str, org: str) -> str:
    """``key_name`` without its ``@org/`` prefix when it is under ``org``; else unchanged."""
    prefix = f"@{org}/"
    return key_name[len(prefix) :] if key_name.startswith(prefix) else key_name


def rest_of(key_name: str) -> str:
    """The key without its ``@org/`` prefix, whatever the org ("" for a bare ``@org``)."""
    return (split_key(key_name) or ("", ""))[1]


def is_shared_best(rest: str) -> bool:
    return SHARED_BEST.match(rest) is not None


def is_public(rest: str, shared: tuple[str, ...]) -> bool:
    """Whether the org-relative ``rest`` lies in one of the ``shared`` namespaces."""
    return any(rest == name.rstrip("/") or rest.startswith(name) for name in shared)


# --- the community's experiment keys --------------------------------------------------------


def experiment_key(agent: str, description: str) -> str:
    """The community's experiment key: ``<agent>--<slug>--<sha256(description)[:6]>``."""
    return f"{agent}--{slug(description)}--{short_hash(description, 6)}"


def claim_key(agent: str, description: str) -> str:
    """The community's claim of an experiment (org-relative)."""
    return CLAIMS + experiment_key(agent, description)


def result_key(agent: str, description: str) -> str:
    """The community's result of an experiment (org-relative)."""
    return RESULTS + experiment_key(agent, description)


# --- bests ------------------------------------------------------------------------------


def best_base(track: str, primary_track: str, tier: str | None = None) -> str:
    """The org-relative folder of a track's best pair: the bare ``best/`` for the org's
    own (primary) track, ``tracks/<track>/best/`` for any other; per tier below it."""
    base = BEST if track == primary_track else f"{TRACKS}{slug(track)}/{BEST}"
    return base if tier is None else f"{base}tier/{slug(tier)}/"


def best_metadata(track: str, primary_track: str, tier: str | None = None) -> str:
    return best_base(track, primary_track, tier) + "metadata"


def best_train_py(track: str, primary_track: str, tier: str | None = None) -> str:
    return best_base(track, primary_track, tier) + "train_py"


def agent_best(agent: str, track: str, primary_track: str) -> str:
    """An agent's own best: ``best/agent/<agent>`` (under the track's prefix)."""
    return best_base(track, primary_track) + f"agent/{agent}"


def track_of_best(rest: str) -> str | None:
    """The track slug a ``tracks/<slug>/best/...`` key names; None for the bare ``best/``."""
    match = SHARED_BEST.match(rest)
    prefix = match.group(1) if match else None
    return prefix[len(TRACKS) : -1] if prefix else None
