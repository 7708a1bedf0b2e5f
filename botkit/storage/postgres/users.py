"""The PostgreSQL store's console users: who may log in to the operator console, and as what."""

from __future__ import annotations

from typing import Any

from botkit.core.records import User
from botkit.errors import UserExistsError
from botkit.storage.rows import user_from_row
from botkit.storage.postgres.connection import PgConnection

__all__ = ["PgUsers"]


class PgUsers(PgConnection):
    """``UserStore`` on PostgreSQL."""

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

