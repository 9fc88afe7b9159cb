"""Who may sign in to the HR console, and the sessions of those who did.

Local accounts (the embedded default) sign in with a password stored as a scrypt hash; the
production path, OpenID Connect with Google or Microsoft (:mod:`automation.console.oidc`),
binds an account to the provider's ``oidc_issuer`` and ``oidc_subject`` instead. A session
is a random token in an HttpOnly cookie; the database keeps only its SHA-256, so a copy of
the table signs nobody in. Each session has its own CSRF token that every change must carry.
Five wrong passwords lock an account for fifteen minutes; a refusal never says whether the
address exists. Every account change, sign-in, refused sign-in and sign-out is in the audit
log (never a password or a token).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from automation import audit
from automation.errors import AutomationError
from automation.models import ConsoleAccount, ConsoleGrant, ConsoleSession, Organization, Person

log = logging.getLogger("automation.console")

# A consultant ("fractional HR") has an HR partner's rights in its own organization and sees
# the organizations it is granted (grant()) through the console's client pages only.
ROLES = ("hr_admin", "hr_partner", "manager", "consultant")
CONSULTANT = "consultant"
MIN_PASSWORD = 12
MAX_FAILED_SIGN_INS = 5
LOCKOUT = dt.timedelta(minutes=15)
SESSION_LIFETIME = dt.timedelta(hours=12)
SESSION_IDLE = dt.timedelta(hours=2)
_SEEN_EVERY = dt.timedelta(minutes=1)  # last_seen_at is written at most once a minute

# scrypt at n=2^14, r=8 (16 MiB, tens of milliseconds): OWASP's minimum for scrypt.
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32


class AccountError(AutomationError):
    """An account cannot be created or changed as asked; the message says why and the fix."""


class SignInRefused(AutomationError):
    """Wrong address or password, a locked or disabled account: the message is the same for
    all, so that it tells nobody which addresses have accounts."""

    def __init__(self) -> None:
        super().__init__("the address or the password is wrong, or the account is locked")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(key)])


def verify_password(password: str, encoded: str | None) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string."""
    try:
        scheme, n, r, p, salt, key = (encoded or "").split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(key)
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.cache
def _nobody() -> str:
    """A hash to check against when the address has no account, so that a refusal takes as
    long whether or not the account exists."""
    return hash_password(secrets.token_urlsafe(16))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_account(
    session: Session,
    organization_id: int,
    *,
    email: str,
    name: str,
    role: str,
    now: dt.datetime,
    actor: str,
    password: str | None = None,
) -> ConsoleAccount:
    """A new local account. A manager's account is tied to the person with that address (their
    reporting chain is what they will see); HR accounts may be tied to a person too."""
    email = email.strip().lower()
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if "@" not in email:
        raise AccountError(f"{email!r} is not an email address")
    if password is not None and len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
    existing = session.scalar(
        select(ConsoleAccount.id).where(
            ConsoleAccount.organization_id == organization_id, ConsoleAccount.email == email
        )
    )
    if existing is not None:
        raise AccountError(f"{email} already has an account")
    person_id = session.scalar(
        select(Person.id).where(Person.organization_id == organization_id, Person.email == email)
    )
    if role == "manager" and person_id is None:
        raise AccountError(
            f"{email} is not a person on record; a manager's account must be one "
            "(fix: import them with the people CSV first)"
        )
    account = ConsoleAccount(
        organization_id=organization_id,
        email=email,
        name=name.strip() or email,
        role=role,
        person_id=person_id,
        password_hash=hash_password(password) if password is not None else None,
        active=True,
        failed_sign_ins=0,
        created_at=now,
    )
    session.add(account)
    session.flush()
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="console.account_created",
        subject_kind="console_account",
        subject_id=account.id,
        at=now,
        data={"email": email, "role": role, "local_password": password is not None},
    )
    return account


@dataclass(frozen=True)
class SignedIn:
    account: ConsoleAccount
    token: str  # for the cookie; never stored
    csrf_token: str
    expires_at: dt.datetime


def sign_in(
    session: Session, organization_id: int, email: str, password: str, now: dt.datetime
) -> SignedIn | None:
    """Check a local password and open a session; None when refused. A refusal is recorded
    (the failed-attempt count, the lock, the audit entry) in the caller's transaction, which
    must commit it either way: raising inside the transaction would roll the count back and
    no account would ever lock. Callers answer with :class:`SignInRefused`'s message."""
    email = email.strip().lower()
    account = session.scalar(
        select(ConsoleAccount).where(
            ConsoleAccount.organization_id == organization_id, ConsoleAccount.email == email
        )
    )
    correct = verify_password(password, account.password_hash if account else _nobody())
    usable = (
        account is not None
        and account.active
        and account.password_hash is not None
        and (account.locked_until is None or account.locked_until <= now)
    )
    if account is None or not usable or not correct:
        if account is not None:
            why = (
                "disabled"
                if not account.active
                else "locked"
                if account.locked_until and account.locked_until > now
                else "no local password"
                if account.password_hash is None
                else "wrong password"
            )
            if why == "wrong password":
                account.failed_sign_ins += 1
                if account.failed_sign_ins >= MAX_FAILED_SIGN_INS:
                    account.locked_until = now + LOCKOUT
                    account.failed_sign_ins = 0
                    why = "wrong password; locked"
            audit.record(
                session,
                organization_id,
                actor=email,
                action="console.sign_in_refused",
                subject_kind="console_account",
                subject_id=account.id,
                at=now,
                data={"reason": why},
            )
        return None
    account.failed_sign_ins = 0
    account.locked_until = None
    return _open_session(session, account, now, {"method": "password"})


def _open_session(
    session: Session, account: ConsoleAccount, now: dt.datetime, how: dict[str, str]
) -> SignedIn:
    """A new session for ``account``, whichever way it proved who it is (``how`` goes to the
    audit entry)."""
    organization_id, email = account.organization_id, account.email
    account.last_sign_in_at = now
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = now + SESSION_LIFETIME
    session.add(
        ConsoleSession(
            organization_id=organization_id,
            account_id=account.id,
            token_sha256=_token_hash(token),
            csrf_token=csrf,
            created_at=now,
            expires_at=expires,
            last_seen_at=now,
        )
    )
    audit.record(
        session,
        organization_id,
        actor=email,
        action="console.signed_in",
        subject_kind="console_account",
        subject_id=account.id,
        at=now,
        data=how,
    )
    return SignedIn(account, token, csrf, expires)


# --------------------------------------------------------------------------- OpenID Connect


def sign_in_oidc(
    session: Session,
    organization_id: int,
    issuer: str,
    subject: str,
    email: str,
    now: dt.datetime,
) -> SignedIn | None:
    """Open a session for the account a verified ID token stands for; None when refused.

    The account must exist (HR adds it, usually with ``automation console account add
    --no-password``) and be active. Its first OpenID Connect sign-in binds it to the
    provider's ``issuer`` and ``subject`` (the provider's stable id for the person: an address
    can be renamed or handed to someone else, the subject cannot); after that only that
    subject signs in to it, whatever address the token carries. A password lock does not
    stop it: the lock is against guessing passwords, and blocking the provider's sign-in too
    would let anyone lock HR out by mistyping their address. Like :func:`sign_in`, a refusal
    is audited in the caller's transaction, which must commit it."""
    account = _oidc_account(session, organization_id, issuer, subject, email)
    if account is None:
        log.warning("console OpenID Connect sign-in refused: no account for %s", email or "-")
        return None
    why = (
        "disabled"
        if not account.active
        else "bound to another identity"
        if account.oidc_subject is not None
        and (account.oidc_issuer, account.oidc_subject) != (issuer, subject)
        else ""
    )
    if why:
        refuse_oidc(session, account, issuer, why, now)
        return None
    if account.oidc_subject is None:
        account.oidc_issuer, account.oidc_subject = issuer, subject
        audit.record(
            session,
            organization_id,
            actor=account.email,
            action="console.oidc_bound",
            subject_kind="console_account",
            subject_id=account.id,
            at=now,
            data={"issuer": issuer, "subject": subject},
        )
    return _open_session(session, account, now, {"method": "oidc", "issuer": issuer})


def oidc_refused(
    session: Session,
    organization_id: int,
    issuer: str,
    subject: str,
    email: str,
    reason: str,
    now: dt.datetime,
) -> None:
    """Record that a verified ID token was refused before :func:`sign_in_oidc` (an email the
    provider has not verified, another hosted domain): audited when an account is known."""
    account = _oidc_account(session, organization_id, issuer, subject, email)
    if account is None:
        log.warning("console OpenID Connect sign-in refused (%s): no account", reason)
        return
    refuse_oidc(session, account, issuer, reason, now)


def refuse_oidc(
    session: Session, account: ConsoleAccount, issuer: str, reason: str, now: dt.datetime
) -> None:
    log.warning("console OpenID Connect sign-in to account %d refused: %s", account.id, reason)
    audit.record(
        session,
        account.organization_id,
        actor=account.email,
        action="console.sign_in_refused",
        subject_kind="console_account",
        subject_id=account.id,
        at=now,
        data={"reason": reason, "method": "oidc", "issuer": issuer},
    )


def _oidc_account(
    session: Session, organization_id: int, issuer: str, subject: str, email: str
) -> ConsoleAccount | None:
    """The account bound to ``issuer`` and ``subject``, else the one with ``email``."""
    bound = session.scalar(
        select(ConsoleAccount).where(
            ConsoleAccount.organization_id == organization_id,
            ConsoleAccount.oidc_issuer == issuer,
            ConsoleAccount.oidc_subject == subject,
        )
    )
    if bound is not None or not email:
        return bound
    return session.scalar(
        select(ConsoleAccount).where(
            ConsoleAccount.organization_id == organization_id,
            ConsoleAccount.email == email.strip().lower(),
        )
    )


def authenticate(
    session: Session, token: str | None, now: dt.datetime
) -> tuple[ConsoleAccount, ConsoleSession] | None:
    """The account and session a cookie's token stands for, or None: unknown, revoked,
    expired, idle for longer than :data:`SESSION_IDLE`, or the account disabled."""
    if not token:
        return None
    row = session.scalar(
        select(ConsoleSession).where(ConsoleSession.token_sha256 == _token_hash(token))
    )
    if (
        row is None
        or row.revoked_at is not None
        or row.expires_at <= now
        or row.last_seen_at + SESSION_IDLE <= now
    ):
        return None
    account = session.get(ConsoleAccount, row.account_id)
    if account is None or not account.active or account.organization_id != row.organization_id:
        return None
    if now - row.last_seen_at >= _SEEN_EVERY:
        row.last_seen_at = now
    return account, row


def csrf_ok(row: ConsoleSession, presented: str | None) -> bool:
    return csrf_token_ok(row.csrf_token, presented)


def csrf_token_ok(expected: str, presented: str | None) -> bool:
    """Constant-time; an empty token on either side never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))


def sign_out(session: Session, token: str | None, now: dt.datetime) -> bool:
    found = authenticate(session, token, now)
    if found is None:
        return False
    end_session(session, *found, now)
    return True


def end_session(
    session: Session, account: ConsoleAccount, row: ConsoleSession, now: dt.datetime
) -> None:
    """End a session :func:`authenticate` returned (the console checks its CSRF token first)."""
    row.revoked_at = now
    audit.record(
        session,
        row.organization_id,
        actor=account.email,
        action="console.signed_out",
        subject_kind="console_account",
        subject_id=account.id,
        at=now,
    )


def set_active(
    session: Session, organization_id: int, email: str, active: bool, now: dt.datetime, actor: str
) -> ConsoleAccount:
    """Disable (or enable again) an account; disabling ends its sessions."""
    account = session.scalar(
        select(ConsoleAccount).where(
            ConsoleAccount.organization_id == organization_id,
            ConsoleAccount.email == email.strip().lower(),
        )
    )
    if account is None:
        raise AccountError(f"{email} has no console account")
    account.active = active
    if not active:
        for row in session.scalars(
            select(ConsoleSession).where(
                ConsoleSession.organization_id == organization_id,
                ConsoleSession.account_id == account.id,
                ConsoleSession.revoked_at.is_(None),
            )
        ):
            row.revoked_at = now
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="console.account_enabled" if active else "console.account_disabled",
        subject_kind="console_account",
        subject_id=account.id,
        at=now,
    )
    return account


# --------------------------------------------------------------------------- client grants


def _system_scope(session: Session, what: str) -> None:
    """Grants span organizations: they are read and written in the system scope (the CLI, the
    console's sign-in look-up), never in a session scoped to one organization."""
    from automation.tenancy import scope_of

    if scope_of(session) is not None:
        raise AccountError(f"{what} spans organizations: call it in the system scope")


def _slug(session: Session, organization_id: int) -> str:
    return session.scalar(select(Organization.slug).where(Organization.id == organization_id)) or ""


def grant(
    session: Session, account: ConsoleAccount, organization_id: int, now: dt.datetime, actor: str
) -> ConsoleGrant:
    """Let a consultant's account open ``organization_id``'s client pages (the cross-client
    summary, the combined overdue queue, the client's report). Only a ``consultant`` account
    can be granted. Granting again changes nothing and returns the grant in force. Audited in
    both organizations' logs as ``console.access_granted``."""
    _system_scope(session, "granting")
    if account.role != CONSULTANT:
        raise AccountError(
            f"{account.email} is a {account.role}: only a consultant's account is granted "
            "client organizations (fix: `automation console account add EMAIL --role consultant`)"
        )
    client = session.get(Organization, organization_id)
    if client is None:
        raise AccountError(f"no organization with id {organization_id}")
    existing = session.scalar(
        select(ConsoleGrant).where(
            ConsoleGrant.account_id == account.id,
            ConsoleGrant.granted_organization_id == organization_id,
        )
    )
    if existing is not None:
        return existing
    row = ConsoleGrant(
        organization_id=account.organization_id,
        account_id=account.id,
        granted_organization_id=organization_id,
        granted_by=actor,
        created_at=now,
    )
    session.add(row)
    session.flush()
    _audit_grant(session, account, client, "console.access_granted", now, actor)
    return row


def revoke(
    session: Session, account: ConsoleAccount, organization_id: int, now: dt.datetime, actor: str
) -> bool:
    """End a consultant's access to ``organization_id``: from the next request on, its client
    pages answer 404 (the console reads the grants on every request). False when there was no
    such grant. Audited in both organizations' logs as ``console.access_revoked``."""
    _system_scope(session, "revoking")
    row = session.scalar(
        select(ConsoleGrant).where(
            ConsoleGrant.account_id == account.id,
            ConsoleGrant.granted_organization_id == organization_id,
        )
    )
    if row is None:
        return False
    session.delete(row)
    session.flush()
    client = session.get(Organization, organization_id)
    assert client is not None  # the foreign key keeps it
    _audit_grant(session, account, client, "console.access_revoked", now, actor)
    return True


def granted_organizations(session: Session, account: ConsoleAccount) -> list[Organization]:
    """The client organizations ``account`` may open, by name; none unless it is a
    consultant's (a grant is only ever made to one)."""
    _system_scope(session, "listing grants")
    if account.role != CONSULTANT:
        return []
    return list(
        session.scalars(
            select(Organization)
            .join(ConsoleGrant, ConsoleGrant.granted_organization_id == Organization.id)
            .where(
                ConsoleGrant.organization_id == account.organization_id,
                ConsoleGrant.account_id == account.id,
            )
            .order_by(Organization.name, Organization.id)
        )
    )


def _audit_grant(
    session: Session,
    account: ConsoleAccount,
    client: Organization,
    action: str,
    now: dt.datetime,
    actor: str,
) -> None:
    """The account's organization records whom it reaches; the client, who reaches it."""
    audit.record(
        session,
        account.organization_id,
        actor=actor,
        action=action,
        subject_kind="console_account",
        subject_id=account.id,
        at=now,
        data={"email": account.email, "organization": client.slug},
    )
    if client.id != account.organization_id:
        audit.record(
            session,
            client.id,
            actor=actor,
            action=action,
            subject_kind="organization",
            subject_id=client.id,
            at=now,
            data={
                "email": account.email,
                "account_organization": _slug(session, account.organization_id),
            },
        )
