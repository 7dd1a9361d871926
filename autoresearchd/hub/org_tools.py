"""The org tools: ``share`` (make a namespace public or private), ``create_invite`` and
``claim_invite`` (:mod:`~autoresearchd.hub.invites` keeps their records).

Only the hub's admin shares and invites; any agent with a key claims an invite, which
verifies it. :class:`~autoresearchd.hub.tools.Tools` serves these beside the memory tools.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from autoresearchd.ensue.errors import FORBIDDEN, NOT_FOUND
from autoresearchd.ensue.keys import SHAREABLE
from autoresearchd.hub import invites
from autoresearchd.hub.arguments import arg, invalid
from autoresearchd.hub.jsonrpc import RpcFault
from autoresearchd.hub.storage.protocol import REASON_NOT_FOUND, HubStore
from autoresearchd.hub.storage.rows import Agent


class OrgTools:
    """The org tools over a store; ``check_org`` refuses an org the hub does not have."""

    def __init__(
        self,
        store: HubStore,
        clock: Callable[[], float],
        default_org: str,
        check_org: Callable[[str], Awaitable[None]],
    ) -> None:
        self.store = store
        self.clock = clock
        self.default_org = default_org
        self.check_org = check_org

    def _admin_org(self, agent: Agent, args: Mapping[str, Any], tool: str) -> str:
        if not agent.is_admin:
            raise RpcFault(FORBIDDEN, f"only the hub's admin may {tool}", {"reason": "admin"})
        org = arg(args, "org", str, "") or self.default_org
        if not org:
            raise invalid("org is required: this hub has no default org")
        return str(org)

    async def share(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        action = args.get("action", args.get("command"))
        prefix = args.get("prefix", args.get("namespace"))
        if action not in ("make_public", "make_private"):
            raise invalid('action must be "make_public" or "make_private"')
        if prefix not in SHAREABLE:
            raise invalid(f"prefix must be one of {', '.join(SHAREABLE)}")
        org = self._admin_org(agent, args, "share")
        await self.check_org(org)
        public = await invites.set_public(
            self.store, org, str(prefix), action == "make_public", self.clock()
        )
        return {"org": org, "public": public}

    async def create_invite(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        org = self._admin_org(agent, args, "create invites")
        await self.check_org(org)
        uses = arg(args, "uses", int, 1)
        ttl_s = args.get("ttl_s", invites.DEFAULT_INVITE_TTL_S)
        positive = isinstance(ttl_s, int | float) and not isinstance(ttl_s, bool) and ttl_s > 0
        if not 1 <= uses <= invites.MAX_INVITE_USES or not positive or not math.isfinite(ttl_s):
            raise invalid(f"uses must be 1 to {invites.MAX_INVITE_USES} and ttl_s positive")
        invite = await invites.create_invite(
            self.store, org, agent.name, uses, float(ttl_s), self.clock()
        )
        return {
            "token": invite.token,
            "org": invite.org,
            "uses": invite.uses,
            "expires_at": invite.expires_at,
        }

    async def claim_invite(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        token = arg(args, "token", str)
        org = invites.org_of(token)
        if org is None or not await self.store.org_exists(org):
            raise RpcFault(NOT_FOUND, "unknown invite token", {"reason": REASON_NOT_FOUND})
        refusal = await invites.claim_invite(self.store, org, token, agent.name, self.clock())
        if refusal:
            raise RpcFault(FORBIDDEN, refusal, {"reason": "invite"})
        return {"agent": agent.name, "org": org, "verified": True, "status": "success"}
