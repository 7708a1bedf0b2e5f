"""docs/deploy.md's nginx config works: a real nginx, terminating TLS, in front of two
``run.py serve`` processes on one PostgreSQL schema, and the fake provider as a process.

The config is taken from the doc as it is written: the ```nginx block under the heading
``### `/etc/nginx/conf.d/botkit.conf` ``. Only the addresses are replaced: the two
instances, the listening port, the certificate files and the access log path. The test
wraps the block in a minimal main config (what Debian's ``/etc/nginx/nginx.conf`` is in
production), with the temp paths under its own prefix, so nginx also runs without root.
Everything listens on 127.0.0.1.

A chain-bot conversation goes through nginx. One instance is stopped with SIGTERM half-way,
and the conversation still completes through nginx, with no callback posted twice by the
test. The provider's status callbacks take the same path, over TLS. Without nginx the test
fails and says to run ``.ci/nginx``. ``BOTKIT_TEST_NGINX=skip`` skips it instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import unused_port

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "deploy.md"
HEADING = "### `/etc/nginx/conf.d/botkit.conf`"
RELIABILITY = ROOT / "tests" / "reliability"
KEY = "deploy-test-key"
PHONES = ("380501230001", "380501230002")
# The chain bot (tests/reliability/rel_bots): what the user says, and what the bot answers.
SCRIPT = [("go", "Q1?"), ("a1", "Q2?"), ("a2", "Q3?"), ("a3", "Done: a1 a2 a3")]
STEP_TIMEOUT = 20.0  # seconds for any one thing to happen
TEST_TIMEOUT = 120.0


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                      else None)
    if found is not None:
        return found
    if os.environ.get("BOTKIT_TEST_NGINX") == "skip":
        pytest.skip("BOTKIT_TEST_NGINX=skip: docs/deploy.md's nginx config is not run")
    pytest.fail("nginx is not installed: run .ci/nginx (CI does), or set BOTKIT_TEST_NGINX=skip"
                " to skip this test", pytrace=False)


def doc_config() -> str:
    """The ```nginx block right after the heading in docs/deploy.md."""
    text = DOC.read_text()
    assert HEADING + "\n" in text, f"docs/deploy.md has no heading {HEADING}"
    after = text.split(HEADING + "\n", 1)[1].lstrip("\n")
    assert after.startswith("```nginx\n"), f"an ```nginx block must follow {HEADING}"
    return after.removeprefix("```nginx\n").split("\n```", 1)[0] + "\n"


def substituted(conf: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert conf.count(old) == 1, f"docs/deploy.md's nginx config must name {old!r} once"
        conf = conf.replace(old, new)
    assert "10.0.0." not in conf, "an upstream off this machine is left in the config"
    return conf


def make_certificate(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: what nginx serves and the clients trust."""
    cert, key = where / "cert.pem", where / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: run .ci/nginx (CI does)", pytrace=False)
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
         "-addext", "extendedKeyUsage=serverAuth"],
        check=True, capture_output=True, timeout=30)
    return cert, key


class Cluster:
    """The fake provider, two botkit instances and nginx, each a process of its own."""

    def __init__(self, tmp: Path, db: str) -> None:
        self.tmp, self.db = tmp, db
        self.provider_port, self.nginx_port = unused_port(), unused_port()
        self.ports = [unused_port(), unused_port()]
        self.provider_url = f"http://127.0.0.1:{self.provider_port}"
        self.public_url = f"https://127.0.0.1:{self.nginx_port}"
        self.upstreams = [f"127.0.0.1:{port}" for port in self.ports]
        self.cert, self.key = make_certificate(tmp)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.access_log = tmp / "access.log"

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with (self.tmp / f"{name}.log").open("ab") as out:
            self.processes[name] = subprocess.Popen(args, cwd=self.tmp, env=env, stdout=out,
                                                    stderr=subprocess.STDOUT)

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOTKIT_")}
        env.update(extra)
        return env

    def start_provider(self) -> None:
        # The provider posts its status callbacks to BOTKIT_PUBLIC_URL, nginx's https URL:
        # it trusts the test's certificate (SSL_CERT_FILE, read by the ssl module).
        self._spawn("provider", [sys.executable, str(ROOT / "run.py"), "fake-provider",
                                 "--port", str(self.provider_port), "--key", KEY],
                    self._env(SSL_CERT_FILE=str(self.cert)))

    def start_instance(self, index: int) -> None:
        # BOTKIT_CALLBACK_SECRET is left unset, as docs/deploy.md allows: the first
        # instance generates it and stores it in the database, and the other reads it.
        env = self._env(
            BOTKIT_API_KEY=KEY, BOTKIT_API_URL=self.provider_url, BOTKIT_SANDBOX="0",
            BOTKIT_DB=self.db, BOTKIT_HOST="127.0.0.1", BOTKIT_PORT=str(self.ports[index]),
            BOTKIT_PUBLIC_URL=self.public_url)
        self._spawn(f"botkit{index}", [
            sys.executable, str(ROOT / "run.py"), "serve",
            "--bots", str(RELIABILITY / "rel_bots"),
            "--templates", str(RELIABILITY / "rel_templates")], env)

    def nginx_args(self) -> list[str]:
        conf = substituted(doc_config(), {
            "10.0.0.11:8080": self.upstreams[0],
            "10.0.0.12:8080": self.upstreams[1],
            "listen 443 ssl;": f"listen 127.0.0.1:{self.nginx_port} ssl;",
            "/etc/letsencrypt/live/bots.example.com/fullchain.pem": str(self.cert),
            "/etc/letsencrypt/live/bots.example.com/privkey.pem": str(self.key),
            "/var/log/nginx/botkit.access.log": str(self.access_log),
        })
        (self.tmp / "botkit.conf").write_text(conf)
        temp = self.tmp / "nginx-temp"
        temp.mkdir(exist_ok=True)
        paths = "\n".join(f"    {kind}_temp_path {temp / kind};"
                          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        # As root, nginx's workers would run as nobody, who cannot enter pytest's tmp folder.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.tmp / "nginx.conf").write_text(
            f"{user}worker_processes 1;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n{paths}\n    access_log off;\n"
            f"    include {self.tmp / 'botkit.conf'};\n}}\n")
        return [nginx_binary(), "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf"),
                "-e", str(self.tmp / "nginx-error.log"),
                "-g", (f"daemon off; pid {self.tmp / 'nginx.pid'};"
                       f" error_log {self.tmp / 'nginx-error.log'} notice;")]

    def start_nginx(self) -> None:
        args = self.nginx_args()
        checked = subprocess.run([*args, "-t"], check=False, capture_output=True, text=True,
                                 timeout=30)
        assert checked.returncode == 0, (f"nginx -t refused docs/deploy.md's config:\n"
                                         f"{checked.stderr}{self.log('nginx-error')}")
        self._spawn("nginx", args, self._env())

    def stop(self, name: str, timeout: float = STEP_TIMEOUT * 2) -> None:
        """SIGTERM, as ``systemctl stop`` sends: a graceful stop, exit status 0."""
        process = self.processes[name]
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout)
        assert status == 0, f"{name} exited with {status} after SIGTERM:\n{self.log(name)}"

    def close(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None and name == "nginx":
                # SIGTERM: the master stops its workers; SIGKILL would leave them running.
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            if process.poll() is None:
                process.kill()
            process.wait()

    def alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)}")


async def until(what: str, check: Any, cluster: Cluster, *names: str) -> Any:
    """Poll ``check()`` until it returns something true, or fail saying ``what``."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            result = await check()
        except (TimeoutError, aiohttp.ClientError, OSError):
            result = None
        if result:
            return result
        for name in names:
            cluster.alive(name)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: nothing after {STEP_TIMEOUT:.0f}s")
        await asyncio.sleep(0.05)


@pytest.fixture
def nginx() -> str:
    """nginx's binary; the test fails (or skips) before anything starts without it."""
    return nginx_binary()


@pytest.fixture
async def cluster(nginx: str, tmp_path: Path, postgres: Any) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path, str(postgres.db))
    try:
        yield made
    finally:
        made.close()


class User:
    """A user of the chain bot, whose callbacks go through nginx."""

    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession, callback: str,
                 phone: str) -> None:
        self.cluster, self.session, self.callback, self.phone = cluster, session, callback, phone
        self.seen: list[dict[str, Any]] = []
        self.token = int(phone) * 10

    async def say(self, text: str) -> dict[str, Any]:
        """Post one callback through nginx, once: it must be answered 200 by an instance."""
        message: dict[str, Any] = {"text": text}
        if self.seen:  # the answer names the bot's last message, as the provider does
            message["tracking_data"] = f"tracking_id:{self.seen[-1]['message_id']}"
        self.token += 1
        body = {"message_token": self.token, "phone_number": self.phone,
                "time": int(time.time()), "message": message}
        async with self.session.post(self.callback, json=body) as response:
            answer = await response.json()
            assert response.status == 200, f"{text!r}: HTTP {response.status} {answer}"
        return dict(answer)

    async def reply(self, expected: str) -> None:
        """Wait for the bot's next message at the provider; it must be ``expected``."""
        async def arrived() -> list[dict[str, Any]] | None:
            async with self.session.get(self.cluster.provider_url + "/sandbox/sent") as r:
                mine = [m for m in (await r.json())["messages"] if m["phone"] == self.phone]
            return mine if len(mine) > len(self.seen) else None

        mine = await until(f"{self.phone}: reply {expected!r}", arrived, self.cluster,
                           "provider", "nginx")
        assert [m["text"] for m in mine[len(self.seen):]] == [expected]
        self.seen = mine

    async def step(self, text: str, expected: str) -> None:
        await self.say(text)
        await self.reply(expected)


async def healthz(session: aiohttp.ClientSession, cluster: Cluster) -> dict[str, Any] | None:
    async with session.get(cluster.public_url + "/healthz") as response:
        return dict(await response.json()) if response.status == 200 else None


async def printed_url(cluster: Cluster, index: int) -> str | None:
    found = re.search(r"^provider callbacks go to (\S+)$", cluster.log(f"botkit{index}"),
                      re.MULTILINE)
    return found.group(1) if found else None


async def delivery_statuses(db: str, phones: tuple[str, ...]) -> list[Any]:
    conn = await asyncpg.connect(db)
    try:
        return [r["delivery_status"] for r in await conn.fetch(
            "SELECT delivery_status FROM outbound WHERE phone = ANY($1::text[])", list(phones))]
    finally:
        await conn.close()


def access_log(cluster: Cluster) -> list[str]:
    return cluster.access_log.read_text().splitlines() if cluster.access_log.exists() else []


async def test_two_instances_behind_the_docs_nginx_config(cluster: Cluster) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await run_scenario(cluster)


async def run_scenario(cluster: Cluster) -> None:
    cluster.start_provider()
    for index in (0, 1):  # both at once: the migrations run one process at a time
        cluster.start_instance(index)
    cluster.start_nginx()
    trust = ssl.create_default_context(cafile=str(cluster.cert))
    timeout = aiohttp.ClientTimeout(total=STEP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(ssl=trust)) as session:
        async def answers(url: str) -> bool:
            async with session.get(url) as response:
                return response.status == 200

        await until("the fake provider", lambda: answers(cluster.provider_url + "/sandbox/sent"),
                    cluster, "provider")
        for index, upstream in enumerate(cluster.upstreams):
            await until(f"botkit{index}'s /healthz", lambda u=upstream: answers(
                f"http://{u}/healthz"), cluster, f"botkit{index}")
        health = await until("/healthz through nginx", lambda: healthz(session, cluster),
                             cluster, "nginx")
        assert health["database"] == "ok" and health["sandbox"] is False
        for inside in ("/console/login", "/metrics"):  # not through nginx
            async with session.get(cluster.public_url + inside) as response:
                assert response.status == 404, inside

        # Both instances print the callback URL: nginx's, with one secret, generated once.
        urls = [await until(f"botkit{i}'s callback URL", lambda i=i: printed_url(cluster, i),
                            cluster, f"botkit{i}") for i in (0, 1)]
        assert urls[0] == urls[1], urls
        assert urls[0].startswith(cluster.public_url + "/viber/callback/")
        secret = urls[0].rsplit("/", 1)[1]

        first = User(cluster, session, urls[0], PHONES[0])
        for text, expected in SCRIPT[:2]:
            await first.step(text, expected)
        served = access_log(cluster)
        cluster.stop("botkit0")  # SIGTERM, half-way through the conversation
        # The stopped instance refuses connections: nginx hands each request to the other.
        for text, expected in SCRIPT[2:]:
            await first.step(text, expected)
        second = User(cluster, session, urls[0], PHONES[1])
        for text, expected in SCRIPT:
            await second.step(text, expected)
        health = await until("/healthz through nginx, one instance left",
                             lambda: healthz(session, cluster), cluster, "nginx")
        assert health["database"] == "ok"

        # nginx refuses a body over 64 KiB itself, before any instance sees it.
        async with session.post(urls[0], data=b"{" + b" " * 70_000 + b"}",
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 413

        # The provider's status callbacks came through nginx and TLS too.
        async def all_statused() -> bool:
            statuses = await delivery_statuses(cluster.db, PHONES)
            return len(statuses) == 8 and None not in statuses

        await until("a delivery status for each message", all_statused, cluster, "provider")

    log = access_log(cluster)
    text = "\n".join(log)
    assert secret not in text, "the access log must not hold the callback secret"
    a, b = cluster.upstreams
    posts = [line for line in log if '"POST /viber/callback/..."' in line]
    # Before the stop, both instances answered callbacks...
    assert any(f"upstream={a} " in line for line in served if "POST" in line), served
    assert any(f"upstream={b} " in line for line in served if "POST" in line), served
    # ...after it, a request that nginx first tried on the stopped one went to the other.
    assert any(f"upstream={a}, {b} " in line and " 200 " in line for line in posts), text
    assert all(" 200 " in line for line in posts if "upstream=-" not in line), text
    assert any(" 413 " in line and "upstream=-" in line for line in posts), text
    for name in ("botkit0", "botkit1", "provider"):
        assert "Traceback" not in cluster.log(name), cluster.log(name)
