"""The SQLite store's console users: who may log in to the operator console, and as what."""

from __future__ import annotations

from typing import Any

from botkit.core.records import User
from botkit.errors import UserExistsError
from botkit.storage.rows import user_from_row
from botkit.storage.sqlite.connection import Connection

__all__ = ["Users"]


class Users(Connection):
    """``UserStore`` on SQLite."""

    async def add_user(self, user: User) -> None:
        await self._run(self._add_user, user)

    def _add_user(self, user: User) -> None:
        with self._write() as db:
            if self._one("SELECT 1 FROM users WHERE name = ?", [user.name]):
                raise UserExistsError(f"user {user.name!r} exists already")
            db.execute("INSERT INTO users (name, role, password_hash, created_at)"
                       " VALUES (?, ?, ?, ?)",
                       [user.name, user.role, user.password_hash, user.created_at])

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

