"""The PostgreSQL store's part of the operator console: its users, who has which
conversation, what agents did."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import asyncpg

from botkit.core.records import AgentAction, User
from botkit.errors import UserExistsError
from botkit.storage.postgres.connection import PgConnection
from botkit.storage.rows import action_from_row, user_from_row

__all__ = ["PgConsole"]


class PgConsole(PgConnection):
    """``ConsoleStore`` on PostgreSQL."""

    async def add_user(self, user: User) -> None:
        async with self._tx() as conn:
            added = await conn.fetchval(
                "INSERT INTO users (name, role, password_hash, created_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING RETURNING 1",
                user.name, user.role, user.password_hash, user.created_at)
        if added is None:
            raise UserExistsError(f"user {user.name!r} exists already")

    async def user(self, name: str) -> User | None:
        row = await self._one("SELECT * FROM users WHERE name = $1", name)
        return None if row is None else user_from_row(row)

    async def users(self) -> list[User]:
        return [user_from_row(r) for r in await self._rows("SELECT * FROM users ORDER BY name")]

    async def remove_user(self, name: str) -> bool:
        async with self._tx() as conn:
            return bool(await conn.fetchval(
                "WITH gone AS (DELETE FROM users WHERE name = $1 RETURNING 1)"
                " SELECT count(*) FROM gone", name))

    async def set_password(self, name: str, password_hash: str) -> bool:
        async with self._tx() as conn:
            return bool(await conn.fetchval(
                "WITH changed AS (UPDATE users SET password_hash = $2 WHERE name = $1"
                " RETURNING 1) SELECT count(*) FROM changed", name, password_hash))

    # -- who has which conversation, and what agents did ---------------------------------

    async def take(self, conversation_id: int, agent: str, now: float, *,
                   over: bool = False) -> str | None:
        async with self._tx() as conn:
            if await conn.fetchval(
                    "INSERT INTO assignments (conversation_id, agent, taken_at)"
                    " VALUES ($1, $2, $3) ON CONFLICT (conversation_id) DO NOTHING RETURNING 1",
                    conversation_id, agent, now):
                await _insert_action(conn, AgentAction(conversation_id=conversation_id,
                                                       agent=agent, action="took", at=now))
                return None
            holder = str(await conn.fetchval(
                "SELECT agent FROM assignments WHERE conversation_id = $1 FOR UPDATE",
                conversation_id))
            if holder == agent:
                return None
            if not over:
                return holder
            await conn.execute("UPDATE assignments SET agent = $2, taken_at = $3"
                               " WHERE conversation_id = $1", conversation_id, agent, now)
            await _insert_action(conn, AgentAction(conversation_id=conversation_id, agent=agent,
                                                   action="took_over", detail=holder, at=now))
            return None

    async def holders(self, conversation_ids: Collection[int]) -> dict[int, str]:
        rows = await self._rows("SELECT conversation_id, agent FROM assignments"
                                " WHERE conversation_id = ANY($1::bigint[])",
                                list(conversation_ids))
        return {int(r["conversation_id"]): str(r["agent"]) for r in rows}

    async def record_action(self, action: AgentAction, *, drop: bool = False) -> None:
        async with self._tx() as conn:
            await _insert_action(conn, action)
            if drop:
                await conn.execute("DELETE FROM assignments WHERE conversation_id = $1",
                                   action.conversation_id)

    async def actions(self, conversation_id: int) -> list[AgentAction]:
        rows = await self._rows("SELECT * FROM agent_actions WHERE conversation_id = $1"
                                " ORDER BY id", conversation_id)
        return [action_from_row(r) for r in rows]


async def _insert_action(conn: asyncpg.Connection, action: AgentAction) -> None:
    await conn.execute("INSERT INTO agent_actions (conversation_id, agent, action, detail, at)"
                       " VALUES ($1, $2, $3, $4, $5)", action.conversation_id, action.agent,
                       action.action, action.detail, action.at)
