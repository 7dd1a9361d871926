"""The hub's reserved namespace: which full key names lie in an org's ``.hub/``."""

from __future__ import annotations

import pytest

from autoresearchd.hub.invites import is_reserved_key


@pytest.mark.parametrize(
    ("key", "reserved"),
    [
        ("@org/.hub/public", True),
        ("@org/.hub/invites/abc", True),
        ("@org/results/.hub/x", False),  # .hub/ deeper than the org's own
        ("@.hub/results/x", False),  # an org named .hub
        ("@org/x.hub/y", False),
        ("org/.hub/public", False),  # not a full name
        ("@/.hub/x", False),  # no org
        ("@org/results/x", False),
    ],
)
def test_a_key_is_reserved_only_in_its_orgs_own_hub_namespace(key: str, reserved: bool) -> None:
    assert is_reserved_key(key) is reserved
