"""Which calendar provider the settings ask for, built once per runtime.

Imports are lazy: the embedded default never loads the Google, Graph or CalDAV libraries.
"""

from __future__ import annotations

from automation.clock import Clock
from automation.ports import CalendarProvider
from automation.settings import Settings


def build_calendar(settings: Settings, clock: Clock | None = None) -> CalendarProvider:
    """The provider named by ``calendar_provider``. "imip" keeps the local files as the
    service's own copy and sends invites by email (see automation.services.calendars)."""
    name = settings.calendar_provider
    if name == "google":
        from automation.adapters.google import GoogleCalendar

        return GoogleCalendar.from_settings(settings)
    if name == "graph":
        from automation.adapters.graph import GraphCalendar

        # The delta window follows the service's clock (a simulated one in tests and the demo).
        return GraphCalendar.from_settings(settings, clock.now if clock else None)
    if name == "caldav":
        from automation.adapters.caldav import CalDavCalendar

        return CalDavCalendar.from_settings(settings)
    from automation.adapters.local import LocalCalendar

    return LocalCalendar(settings.calendars, clock.now if clock else None)


def connected(settings: Settings, organizer: str) -> bool:
    """True when the organizer's calendar is reachable through the configured provider;
    otherwise the series goes out as iMIP invites by email."""
    if settings.calendar_provider in ("local", "imip"):
        return settings.calendar_provider == "local"
    if not settings.calendar_domains:
        return True
    return organizer.lower().rpartition("@")[2] in settings.calendar_domains
