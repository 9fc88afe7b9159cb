"""A real Dovecot IMAP server in a subprocess, on loopback, for the IMAP tests and benchmarks.

    with running_dovecot() as server:
        account = server.add_user("alice")          # a fresh, empty mailbox
        server.deliver(account, raw)                # straight into Maildir new/ (fast)
        server.append(account, raw, "INBOX")        # through IMAP APPEND
        ImapInbox(server.host, server.port, "none", account.username, account.password, ...)

or, in a test module, ``dovecot = dovecot_fixture()`` for a module-scoped fixture; each test
then adds its own user, so tests share one server but never a mailbox.

Written for Dovecot 2.3 (Debian 12 ships 2.3.19; ``dovecot --version``). Everything lives in
one temporary folder: the configuration, ``base_dir`` (sockets and the pid file), ``state_dir``,
the log, passwd-files with plain passwords (passdb and userdb; one file per user,
``users/%u``, since Dovecot re-reads a changed file at most once a second), and ``maildir:``
mail under ``mail/<user>/Maildir``. The master runs in the foreground (``dovecot -F``) as our
child, so no systemd and no daemon left behind: leaving the context terminates it. No
service is chrooted. A failed login slows the next logins from 127.0.0.1 by seconds (auth
penalty): tests of refused logins should use a server of their own.

Users and root: Dovecot refuses mail access as uid 0, and its login and internal processes
need existing unprivileged users. As root (here and in CI) the login processes run as
``dovenull``, the internal ones as ``dovecot`` (both made by the Debian package), and mail is
owned by ``nobody:nogroup``; the temporary folder is made world-traversable so those users
reach their sockets and mail, and :meth:`DovecotServer.deliver` chowns what it writes. As an
ordinary user, every one of those is the current user and group (Dovecot runs unprivileged;
checked as ``nobody``).

With ``tls=True`` the server also listens for implicit TLS (``tls_port``) with a self-signed
certificate for 127.0.0.1 and localhost (``ca_file`` trusts it), ``ssl = required``, and
STARTTLS on the plain port (Dovecot counts loopback as secure, so a plain login still
works). ``capabilities`` replaces what Dovecot announces after login (``imap_capability``),
e.g. without MOVE to exercise a client's fallback.

Under ``CI=true`` a missing ``dovecot`` binary fails the calling test (install
``dovecot-imapd``; ``.ci/run`` does); elsewhere it skips with the reason.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DOVECOT = os.environ.get("AUTOMATION_TEST_DOVECOT", "/usr/sbin/dovecot")
DOVEADM = os.environ.get("AUTOMATION_TEST_DOVEADM", "/usr/bin/doveadm")
PASSWORD = "imap-password"
_names = itertools.count(1)


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    maildir: Path  # the INBOX Maildir; other folders are Maildir++ ".Name" folders inside


def dovecot_binary() -> str | None:
    """The dovecot executable, or None when it is not installed."""
    if os.access(DOVECOT, os.X_OK):
        return DOVECOT
    return shutil.which("dovecot")


def dovecot_version() -> str:
    binary = dovecot_binary()
    if binary is None:
        return ""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def require_dovecot() -> str:
    """The dovecot binary; skip the calling test without it, or fail it under CI=true."""
    binary = dovecot_binary()
    if binary is not None:
        return binary
    message = f"Dovecot is not installed (no {DOVECOT})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires it: apt-get install dovecot-imapd (see .ci/run)")
    pytest.skip(f"{message}; apt-get install dovecot-imapd to run the IMAP tests")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _identities() -> tuple[str, str, int, int]:
    """(login user, internal user, mail uid, mail gid) for the current privileges."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for name in ("dovenull", "dovecot"):
            pwd.getpwnam(name)  # KeyError: the package's users are missing
        return "dovenull", "dovecot", nobody.pw_uid, nobody.pw_gid
    me = pwd.getpwuid(os.geteuid())
    return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid


class DovecotServer:
    """One running Dovecot. Use :func:`running_dovecot` to start and stop it."""

    host = "127.0.0.1"

    def __init__(self, root: Path, port: int, tls_port: int | None, ca_file: str | None):
        self.root = root
        self.port = port  # plain IMAP (STARTTLS offered when tls)
        self.tls_port = tls_port  # implicit TLS (IMAPS), when started with tls=True
        self.ca_file = ca_file
        self.config = root / "dovecot.conf"
        self.log = root / "dovecot.log"
        self.users = root / "users"  # one passwd-file per user
        self.process: subprocess.Popen[bytes] | None = None
        _login, _internal, self.mail_uid, self.mail_gid = _identities()

    # ------------------------------------------------------------------ accounts

    def add_user(self, name: str | None = None, password: str = PASSWORD) -> Account:
        """A new user with an empty INBOX (usable at once: its own passwd-file)."""
        name = name or f"user{next(_names)}"
        home = self.root / "mail" / name
        maildir = home / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self._own(home, maildir, *(maildir / sub for sub in ("cur", "new", "tmp")))
        # One passwd-file per user (the path holds %u): Dovecot reads a changed file at most
        # once a second, so users added to one shared file in the same second go unseen.
        line = f"{name}:{{PLAIN}}{password}:{self.mail_uid}:{self.mail_gid}::{home}::\n"
        (self.users / name).write_text(line)
        return Account(name, password, maildir)

    def _own(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            for path in paths:
                os.chown(path, self.mail_uid, self.mail_gid)

    def folder_path(self, account: Account, folder: str = "INBOX") -> Path:
        """The Maildir of a folder (Maildir++: INBOX is the root, others are ``.Name``)."""
        if folder.upper() == "INBOX":
            return account.maildir
        return account.maildir / ("." + folder.replace("/", "."))

    def deliver(self, account: Account, raw: bytes, folder: str = "INBOX") -> str:
        """Write one message straight into the folder's ``new/``, as an MTA's Maildir delivery
        does (no IMAP round trip: fast enough to seed 10,000 messages). Dovecot gives it the
        next UID when a client next looks, in delivery order. Returns the file name."""
        target = self.folder_path(account, folder)
        if not (target / "new").is_dir():
            for sub in ("cur", "new", "tmp"):
                (target / sub).mkdir(parents=True, exist_ok=True)
            (target / "maildirfolder").touch()
            self._own(target, *(target / s for s in ("cur", "new", "tmp", "maildirfolder")))
        # Dovecot orders new files by the leading number (a time), then by the rest of the name.
        name = f"{int(time.time())}.M{next(_names):09d}P{os.getpid()}.dovecot-fake"
        tmp = target / "tmp" / name
        tmp.write_bytes(raw)
        self._own(tmp)
        os.replace(tmp, target / "new" / name)
        return name

    def connect(self, account: Account) -> imaplib.IMAP4:
        """A logged-in plain IMAP connection (a second client, for a test to act with)."""
        conn = imaplib.IMAP4(self.host, self.port, timeout=30)
        if self.tls_port is not None:
            import ssl

            conn.starttls(ssl.create_default_context(cafile=self.ca_file))
        conn.login(account.username, account.password)
        return conn

    def append(self, account: Account, raw: bytes, folder: str = "INBOX", flags: str = "") -> None:
        """Add one message through IMAP APPEND, creating the folder if needed."""
        conn = self.connect(account)
        try:
            mailbox = '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
            if folder.upper() != "INBOX":
                conn.create(mailbox)  # NO when it exists: harmless
            typ, data = conn.append(mailbox, f"({flags})" if flags else None, None, raw)
            if typ != "OK":
                raise RuntimeError(f"APPEND to {folder} failed: {data!r}")
        finally:
            conn.logout()

    # ------------------------------------------------------------------ doveadm

    def doveadm(self, *args: str) -> str:
        """Run ``doveadm -c <our config> ARGS``; returns its output, raises on failure."""
        out = subprocess.run(
            [DOVEADM, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)}: {out.returncode} {out.stderr}")
        return out.stdout

    def uidvalidity(self, account: Account, folder: str = "INBOX") -> int:
        out = self.doveadm("mailbox", "status", "-u", account.username, "uidvalidity", folder)
        return int(out.strip().split("=")[-1])

    def set_uidvalidity(self, account: Account, value: int, folder: str = "INBOX") -> None:
        """Change a folder's UIDVALIDITY in place, as a server restore or migration does."""
        self.doveadm(
            "mailbox", "update", "-u", account.username, "--uid-validity", str(value), folder
        )

    def count(self, account: Account, folder: str = "INBOX") -> int:
        """Messages in a folder, as Dovecot sees it (0 when the folder does not exist)."""
        try:
            out = self.doveadm("mailbox", "status", "-u", account.username, "messages", folder)
        except RuntimeError:
            return 0
        return int(out.strip().split("=")[-1])

    def kick(self, account: Account) -> None:
        """Disconnect the user's IMAP sessions (what a server restart does to a client)."""
        with contextlib.suppress(RuntimeError):  # exit code 68: nobody was connected
            self.doveadm("kick", account.username)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _config(server: DovecotServer, tls: bool, capabilities: str | None) -> str:
    login, internal, _uid, _gid = _identities()
    root = server.root
    lines = [
        "protocols = imap",
        "listen = 127.0.0.1",
        f"base_dir = {root / 'run'}",
        f"state_dir = {root / 'state'}",
        f"instance_name = dovecot-test-{server.port}",
        f"log_path = {server.log}",
        f"info_log_path = {server.log}",
        "auth_mechanisms = plain login",
        # A failed login answers at once; Dovecot still slows the address's next logins for a
        # few seconds (auth penalty), so tests of refused logins run on a server of their own.
        "auth_failure_delay = 0",
        # Loopback counts as secure anyway; this also allows LOGIN in tls=False.
        "disable_plaintext_auth = no",
        f"default_login_user = {login}",
        f"default_internal_user = {internal}",
        *(
            []
            if os.geteuid() == 0
            else [f"default_internal_group = {grp.getgrgid(os.getegid())[0]}"]
        ),
        f"first_valid_uid = {min(server.mail_uid, 1000) or 1}",
        "mail_location = maildir:~/Maildir",
        # No fsync per message: the tests seed thousands and never cut the power.
        "mail_fsync = never",
        "passdb {",
        "  driver = passwd-file",
        f"  args = scheme=PLAIN {server.users}/%u",
        "}",
        "userdb {",
        "  driver = passwd-file",
        f"  args = {server.users}/%u",
        "}",
        # No chroot (an unprivileged Dovecot cannot chroot; the tests need no jail).
        "service anvil {",
        "  chroot =",
        "}",
        "service imap-login {",
        "  chroot =",
        "  inet_listener imap {",
        "    address = 127.0.0.1",
        f"    port = {server.port}",
        "  }",
        "  inet_listener imaps {",
        "    address = 127.0.0.1",
        f"    port = {server.tls_port or 0}",
        "    ssl = yes",
        "  }",
        "}",
        # Many short test connections from one address: no per-IP limit in the way.
        "mail_max_userip_connections = 100",
    ]
    if capabilities is not None:
        lines.append(f"imap_capability = {capabilities}")
    if tls:
        assert server.ca_file is not None
        cert, key = server.ca_file, str(Path(server.ca_file).with_name("key.pem"))
        lines += ["ssl = required", f"ssl_cert = <{cert}", f"ssl_key = <{key}"]
    else:
        lines.append("ssl = no")
    return "\n".join(lines) + "\n"


def _tls_files(root: Path) -> str:
    """A self-signed certificate for 127.0.0.1 (the Graph fake's), copied next to the config."""
    from tests.fakes.graph import certificate

    cert, key = certificate()
    shutil.copyfile(cert, root / "cert.pem")
    shutil.copyfile(key, root / "key.pem")
    os.chmod(root / "key.pem", 0o600)
    return str(root / "cert.pem")


def _wait_ready(server: DovecotServer, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"Dovecot exited with {process.returncode}: {server.log_text()}"
                f"{(server.root / 'stderr.log').read_text(errors='replace')}"
            )
        try:
            with socket.create_connection((server.host, server.port), timeout=1) as sock:
                sock.settimeout(2)
                if sock.recv(100).startswith(b"* OK"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Dovecot did not answer on port {server.port}: {server.log_text()}")
        time.sleep(0.05)


@contextlib.contextmanager
def running_dovecot(
    tls: bool = False, capabilities: str | None = None, startup_timeout: float = 20.0
) -> Iterator[DovecotServer]:
    """Start Dovecot with everything under a new temporary folder; stop it and remove it."""
    binary = require_dovecot()
    # Not pytest's tmp_path: its parents are 0700, and Dovecot's unprivileged processes must
    # reach their sockets and the mail under this folder.
    root = Path(tempfile.mkdtemp(prefix="dovecot-"))
    os.chmod(root, 0o755)
    for sub in ("run", "state", "mail"):
        (root / sub).mkdir()
    server = DovecotServer(root, free_port(), free_port() if tls else None, None)
    server._own(root / "mail")
    if tls:
        server.ca_file = _tls_files(root)
    server.users.mkdir()
    server.config.write_text(_config(server, tls, capabilities))
    with (root / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [binary, "-F", "-c", str(server.config)], stdout=stderr, stderr=subprocess.STDOUT
        )
    server.process = process
    try:
        _wait_ready(server, process, startup_timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def dovecot_fixture(scope: str = "module", **options: object) -> Callable[..., Iterator]:
    """A pytest fixture running one Dovecot for the scope: ``dovecot = dovecot_fixture()``."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def dovecot() -> Iterator[DovecotServer]:
        with running_dovecot(**options) as server:  # type: ignore[arg-type]
            yield server

    return dovecot
