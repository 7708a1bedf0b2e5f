"""The SQLite store's part of the operator console: its users, who has which conversation,
what agents did."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from botkit.core.records import AgentAction, User
from botkit.errors import UserExistsError
from botkit.storage.rows import action_from_row, user_from_row
from botkit.storage.sqlite.connection import Connection

__all__ = ["Console"]


class Console(Connection):
    """``ConsoleStore`` on SQLite."""

    async def add_user(self, user: User) -> None:
        if not await self._run(self._change, "INSERT INTO users (name, role, password_hash,"
                               " created_at) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                               [user.name, user.role, user.password_hash, user.created_at]):
            raise UserExistsError(f"user {user.name!r} exists already")

    async def user(self, name: str) -> User | None:
        row = await self._run(self._one, "SELECT * FROM users WHERE name = ?", [name])
        return None if row is None else user_from_row(row)

    async def users(self) -> list[User]:
        rows = await self._run(self._rows, "SELECT * FROM users ORDER BY name")
        return [user_from_row(r) for r in rows]

    async def remove_user(self, name: str) -> bool:
        return await self._run(self._change, "DELETE FROM users WHERE name = ?", [name])

    async def set_password(self, name: str, password_hash: str) -> bool:
        return await self._run(self._change, "UPDATE users SET password_hash = ? WHERE name = ?",
                               [password_hash, name])

    def _change(self, sql: str, params: list[Any]) -> bool:
        return self._write_one(sql, params).rowcount > 0

    # -- who has which conversation, and what agents did ---------------------------------

    async def take(self, conversation_id: int, agent: str, now: float, *,
                   over: bool = False) -> str | None:
        return await self._run(self._take, conversation_id, agent, now, over)

    def _take(self, conversation_id: int, agent: str, now: float, over: bool) -> str | None:
        with self._write() as db:
            row = self._one("SELECT agent FROM assignments WHERE conversation_id = ?",
                            [conversation_id])
            holder = None if row is None else str(row["agent"])
            if holder == agent:
                return None
            if holder is not None and not over:
                return holder
            db.execute("INSERT INTO assignments (conversation_id, agent, taken_at)"
                       " VALUES (?, ?, ?) ON CONFLICT (conversation_id) DO UPDATE"
                       " SET agent = excluded.agent, taken_at = excluded.taken_at",
                       [conversation_id, agent, now])
            self._insert_action(AgentAction(
                conversation_id=conversation_id, agent=agent,
                action="took_over" if holder else "took", detail=holder, at=now))
            return None

    async def holders(self, conversation_ids: Collection[int]) -> dict[int, str]:
        ids = list(conversation_ids)
        if not ids:
            return {}
        rows = await self._run(self._rows, "SELECT conversation_id, agent FROM assignments"
                               f" WHERE conversation_id IN ({', '.join('?' * len(ids))})", ids)
        return {int(r["conversation_id"]): str(r["agent"]) for r in rows}

    async def record_action(self, action: AgentAction, *, drop: bool = False) -> None:
        await self._run(self._record_action, action, drop)

    def _record_action(self, action: AgentAction, drop: bool) -> None:
        with self._write() as db:
            self._insert_action(action)
            if drop:
                db.execute("DELETE FROM assignments WHERE conversation_id = ?",
                           [action.conversation_id])

    def _insert_action(self, action: AgentAction) -> None:
        self.conn.execute("INSERT INTO agent_actions (conversation_id, agent, action, detail, at)"
                          " VALUES (?, ?, ?, ?, ?)", [action.conversation_id, action.agent,
                                                      action.action, action.detail, action.at])

    async def actions(self, conversation_id: int) -> list[AgentAction]:
        rows = await self._run(self._rows, "SELECT * FROM agent_actions WHERE conversation_id = ?"
                               " ORDER BY id", [conversation_id])
        return [action_from_row(r) for r in rows]
