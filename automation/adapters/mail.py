"""Which mail transport and inbox the settings ask for, built once per runtime.

Imports are lazy: the embedded default never loads smtplib sessions, imaplib or the Google
and Graph clients.
"""

from __future__ import annotations

from automation.ports import InboxReader, MailSender
from automation.settings import Settings


def build_sender(settings: Settings) -> MailSender:
    name = settings.mail_transport
    if name == "smtp":
        from automation.adapters.smtp import SmtpSender

        return SmtpSender.from_settings(settings)
    if name == "gmail":
        from automation.adapters.gmail import GmailSender

        return GmailSender.from_settings(settings)
    if name == "graph":
        from automation.adapters.graph_mail import GraphMailSender

        return GraphMailSender.from_settings(settings)
    from automation.adapters.local import MaildirSender

    return MaildirSender(settings.outbox)


def build_inbox(settings: Settings) -> InboxReader:
    name = settings.mail_inbox
    if name == "imap":
        from automation.adapters.imap import ImapInbox

        return ImapInbox.from_settings(settings)
    if name == "gmail":
        from automation.adapters.gmail import GmailInbox

        return GmailInbox.from_settings(settings)
    if name == "graph":
        from automation.adapters.graph_mail import GraphMailInbox

        return GraphMailInbox.from_settings(settings)
    from automation.adapters.local import MaildirInbox

    return MaildirInbox(settings.inbox)
