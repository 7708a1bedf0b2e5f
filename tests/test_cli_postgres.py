"""Every command that reads or writes the database gives the same answer on PostgreSQL as on
SQLite: a survey run on a SQLite file, copied into PostgreSQL (``run.py copy-db``), then
each command run with ``BOTKIT_DB`` naming one and then the other."""

from __future__ import annotations

from pathlib import Path

from test_cli import ANA, BO, CY, TEMPLATES, run_cli

from botkit.testing import Harness
from bots.support import support
from bots.survey import survey


async def test_the_commands_answer_alike_on_both_engines(tmp_path: Path, postgres) -> None:
    db = tmp_path / "bot.db"
    async with Harness(flows=[survey, support], db=db, templates=TEMPLATES) as bot:
        ana = bot.chat(ANA)
        await ana.start("survey")
        for answer in ("Ana", "ten", "5", "Quick delivery"):
            await ana.answer(answer)
        await bot.chat(BO).start("survey")
        await bot.chat(CY).send("agent")
        await bot.settle()
    copied = run_cli("copy-db", str(db), str(postgres.db), db=db)
    assert copied.returncode == 0, copied.stderr
    commands = [("conversations",), ("conversations", "--by-version"), ("stats", "survey"),
                ("messages", ANA), ("export", "survey")]
    for args in commands:
        on_sqlite = run_cli(*args, db=db)
        on_postgres = run_cli(*args, db=postgres.db)
        assert on_sqlite.returncode == on_postgres.returncode == 0, (args, on_postgres.stderr)
        assert on_postgres.stdout == on_sqlite.stdout, args
    for target in (db, postgres.db):  # a write: the human hands the conversation back
        released = run_cli("release", CY, db=target)
        assert released.returncode == 0, released.stderr
        again = run_cli("release", CY, db=target)
        assert again.returncode == 1 and "has no conversation waiting for a human" in again.stderr
