"""The consistency report: where check-in practice diverges between managers and teams.

Three layers, so most of it is plain functions over plain data:

* ``load_facts`` runs a handful of queries. Counts are SQL ``GROUP BY`` aggregates (a year of a
  large organisation is millions of occurrences); only the rows that need per-row arithmetic
  come back one by one: documented check-ins (for the delay percentiles) and undocumented
  ones old enough to be past the ladder's first step (business days, in the manager's zone).
* ``aggregate`` turns the facts into figures per manager, per team and for the organisation.
* ``render_html`` / ``render_csv`` / ``as_json`` present the figures; the HTML's bar charts are
  inline SVG drawn by ``bar_chart`` (no JavaScript, no external assets, escaped labels).

Definitions (also in the HTML's footnotes):

* **Due** check-in: an occurrence that ended inside the period and before ``as_of``, not
  cancelled. A skipped one is due but not held.
* **Completion**: due check-ins that were held or documented, over due. **Documented**: due
  check-ins with at least one conversation record.
* **Documentation delay**: hours from the meeting's end to its first record (version 1);
  median and p90 (linear interpolation between closest ranks).
* **Overdue check-in**: due, not skipped, no record, and the cadence ladder's first step
  (N business days after the end, in the manager's zone) has fallen due by ``as_of``.
  **Overdue PIP review**: due in the period, undocumented, past its PIP ladder's first step.
  **Overdue action item**: open, with a due date before ``as_of``'s date in the manager's zone,
  in the latest version of a record about a check-in or PIP review in the period (a corrected
  record supersedes the items of earlier versions).
* **PIPs**: plans whose time span overlaps the period, counted by state and by outcome.
* **Manager** rows group by who ran the check-in (the series' manager) or owns the PIP;
  **team** rows group by the employee's current manager (a manager's direct reports).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from automation.domain.cadence import add_business_days
from automation.models import (
    ActionItem,
    Cadence,
    CheckinSeries,
    ConversationRecord,
    Occurrence,
    OccurrenceState,
    Organization,
    Person,
    Pip,
    PipReview,
)

NO_MANAGER = 0  # the group key of rows whose employee has no manager on record


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class PersonInfo:
    id: int
    name: str
    email: str
    timezone: str
    manager_id: int | None
    active: bool


@dataclass(frozen=True)
class CheckinCount:
    """How many due check-ins share a (manager, team, state, documented) combination."""

    manager_id: int
    team_id: int
    state: str
    documented: bool
    count: int


@dataclass(frozen=True)
class Delay:
    manager_id: int
    team_id: int
    hours: float


@dataclass(frozen=True)
class Overdue:
    """One overdue thing: ``kind`` is checkin, pip_review or action_item."""

    kind: str
    manager_id: int
    team_id: int


@dataclass(frozen=True)
class PipFact:
    manager_id: int
    team_id: int
    state: str
    outcome: str | None


@dataclass
class Facts:
    organization: str
    as_of: dt.datetime
    period_from: dt.datetime | None
    period_to: dt.datetime | None
    people: dict[int, PersonInfo]
    checkins: list[CheckinCount] = field(default_factory=list)
    delays: list[Delay] = field(default_factory=list)
    overdue: list[Overdue] = field(default_factory=list)
    pips: list[PipFact] = field(default_factory=list)


def _in_period(column: Any, period_from: dt.datetime | None, period_to: dt.datetime | None) -> Any:
    conditions = []
    if period_from is not None:
        conditions.append(column >= period_from)
    if period_to is not None:
        conditions.append(column < period_to)
    return conditions


def _first_step_days(ladder: Sequence[dict[str, Any]]) -> int | None:
    return int(ladder[0]["after_business_days"]) if ladder else None


def load_facts(
    session: Session,
    organization_id: int,
    *,
    as_of: dt.datetime,
    period_from: dt.datetime | None = None,
    period_to: dt.datetime | None = None,
    business_weekdays: frozenset[int] = frozenset(range(5)),
    holidays: Iterable[dt.date] = (),
) -> Facts:
    """Everything the report needs, from the database, as of ``as_of`` (aware UTC)."""
    holidays = tuple(holidays)
    org = session.get(Organization, organization_id)
    people = {
        row.id: PersonInfo(row.id, row.name, row.email, row.timezone, row.manager_id, row.active)
        for row in session.execute(
            select(
                Person.id,
                Person.name,
                Person.email,
                Person.timezone,
                Person.manager_id,
                Person.active,
            ).where(Person.organization_id == organization_id)
        )
    }
    facts = Facts(org.name if org else str(organization_id), as_of, period_from, period_to, people)

    def zone_of(person_id: int) -> str:
        person = people.get(person_id)
        return person.timezone if person else "UTC"

    employee = aliased(Person)
    first = (
        select(
            ConversationRecord.subject_id.label("subject_id"),
            func.min(ConversationRecord.created_at).label("first_at"),
        )
        .where(
            ConversationRecord.organization_id == organization_id,
            ConversationRecord.subject_kind == "occurrence",
        )
        .group_by(ConversationRecord.subject_id)
        .subquery()
    )
    team = func.coalesce(employee.manager_id, NO_MANAGER)
    due = [
        Occurrence.organization_id == organization_id,
        Occurrence.end_at <= as_of,
        Occurrence.state != OccurrenceState.CANCELLED,
        *_in_period(Occurrence.end_at, period_from, period_to),
    ]

    def base(*columns: Any) -> Any:
        return (
            select(*columns)
            .select_from(Occurrence)
            .join(
                CheckinSeries,
                (CheckinSeries.organization_id == Occurrence.organization_id)
                & (CheckinSeries.id == Occurrence.series_id),
            )
            .join(
                employee,
                (employee.organization_id == CheckinSeries.organization_id)
                & (employee.id == CheckinSeries.employee_id),
            )
            .outerjoin(first, first.c.subject_id == Occurrence.id)
            .where(*due)
        )

    # 1. Counts: one SQL aggregate, a few rows per manager whatever the number of meetings.
    documented = case((first.c.first_at.is_not(None), 1), else_=0)
    rows = session.execute(
        base(
            CheckinSeries.manager_id,
            team,
            Occurrence.state,
            documented,
            func.count(),
        ).group_by(CheckinSeries.manager_id, team, Occurrence.state, documented)
    )
    facts.checkins = [CheckinCount(m, t, str(state), bool(d), int(n)) for m, t, state, d, n in rows]

    # 2. Delays: the documented meetings, one row each (percentiles need the values).
    for manager_id, team_id, end_at, first_at in session.execute(
        base(CheckinSeries.manager_id, team, Occurrence.end_at, first.c.first_at)
        .where(first.c.first_at.is_not(None))
        .order_by(Occurrence.id)
    ):
        facts.delays.append(Delay(manager_id, team_id, (first_at - end_at).total_seconds() / 3600))

    # 3. Overdue check-ins. N business days are at least N calendar days, so only meetings
    # that ended N days before as_of can be past the first step: the rest never leave SQL.
    ladders = {
        cid: _first_step_days(definition.get("ladder", ()))
        for cid, definition in session.execute(
            select(Cadence.id, Cadence.definition).where(Cadence.organization_id == organization_id)
        )
    }
    known = [d for d in ladders.values() if d is not None]
    if known:
        for manager_id, team_id, end_at, cadence_id in session.execute(
            base(CheckinSeries.manager_id, team, Occurrence.end_at, CheckinSeries.cadence_id)
            .where(
                first.c.first_at.is_(None),
                Occurrence.state != OccurrenceState.SKIPPED,
                Occurrence.end_at <= as_of - dt.timedelta(days=min(known)),
            )
            .order_by(Occurrence.id)
        ):
            days = ladders.get(cadence_id)
            if days is None:
                continue
            step = add_business_days(end_at, days, zone_of(manager_id), business_weekdays, holidays)
            if step <= as_of:
                facts.overdue.append(Overdue("checkin", manager_id, team_id))

    # 4. PIPs overlapping the period, and their overdue reviews.
    pip_periods = [Pip.organization_id == organization_id]
    if period_from is not None:
        pip_periods.append(Pip.ends_on >= period_from)
    if period_to is not None:
        pip_periods.append(Pip.started_on < period_to)
    for manager_id, team_id, state, outcome in session.execute(
        select(Pip.manager_id, team, Pip.state, Pip.outcome)
        .join(
            employee,
            (employee.organization_id == Pip.organization_id) & (employee.id == Pip.employee_id),
        )
        .where(*pip_periods)
        .order_by(Pip.id)
    ):
        facts.pips.append(PipFact(manager_id, team_id, str(state), outcome))
    for manager_id, team_id, due_at, ladder in session.execute(
        select(Pip.manager_id, team, PipReview.due_at, Pip.ladder)
        .join(
            Pip, (Pip.organization_id == PipReview.organization_id) & (Pip.id == PipReview.pip_id)
        )
        .join(
            employee,
            (employee.organization_id == Pip.organization_id) & (employee.id == Pip.employee_id),
        )
        .where(
            PipReview.organization_id == organization_id,
            PipReview.documented_at.is_(None),
            PipReview.due_at <= as_of,
            *_in_period(PipReview.due_at, period_from, period_to),
        )
        .order_by(PipReview.id)
    ):
        days = _first_step_days(ladder or ())
        if days is None:
            continue
        step = add_business_days(due_at, days, zone_of(manager_id), business_weekdays, holidays)
        if step <= as_of:
            facts.overdue.append(Overdue("pip_review", manager_id, team_id))

    # 5. Open action items past due, from the latest version of each record in the period.
    latest = (
        select(
            ConversationRecord.subject_kind.label("kind"),
            ConversationRecord.subject_id.label("subject_id"),
            func.max(ConversationRecord.version).label("version"),
        )
        .where(ConversationRecord.organization_id == organization_id)
        .group_by(ConversationRecord.subject_kind, ConversationRecord.subject_id)
        .subquery()
    )
    items = (
        select(ActionItem.due_on, ConversationRecord.subject_kind, ConversationRecord.subject_id)
        .join(
            ConversationRecord,
            (ConversationRecord.organization_id == ActionItem.organization_id)
            & (ConversationRecord.id == ActionItem.record_id),
        )
        .join(
            latest,
            (latest.c.kind == ConversationRecord.subject_kind)
            & (latest.c.subject_id == ConversationRecord.subject_id)
            & (latest.c.version == ConversationRecord.version),
        )
        .where(
            ActionItem.organization_id == organization_id,
            ActionItem.done.is_(False),
            ActionItem.due_on.is_not(None),
            # A day of slack for the zones ahead of UTC; the exact test is per manager below.
            ActionItem.due_on <= as_of.date() + dt.timedelta(days=1),
        )
        .order_by(ActionItem.id)
        .subquery()
    )
    checkin_items = session.execute(
        base(CheckinSeries.manager_id, team, items.c.due_on)
        .join(
            items,
            (items.c.subject_kind == "occurrence") & (items.c.subject_id == Occurrence.id),
        )
        .order_by(Occurrence.id)
    ).all()
    review_items = session.execute(
        select(Pip.manager_id, team, items.c.due_on)
        .select_from(PipReview)
        .join(
            Pip, (Pip.organization_id == PipReview.organization_id) & (Pip.id == PipReview.pip_id)
        )
        .join(
            employee,
            (employee.organization_id == Pip.organization_id) & (employee.id == Pip.employee_id),
        )
        .join(
            items,
            (items.c.subject_kind == "pip_review") & (items.c.subject_id == PipReview.id),
        )
        .where(
            PipReview.organization_id == organization_id,
            *_in_period(PipReview.due_at, period_from, period_to),
        )
        .order_by(PipReview.id)
    ).all()
    for manager_id, team_id, due_on in [*checkin_items, *review_items]:
        today = as_of.astimezone(_zone(zone_of(manager_id))).date()
        if due_on < today:
            facts.overdue.append(Overdue("action_item", manager_id, team_id))
    return facts


def _zone(name: str) -> dt.tzinfo:
    from automation.domain.cadence import zone

    return zone(name)


# --------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th quantile (0..1) by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass(frozen=True)
class Figures:
    """One group's figures: a manager, a team, or the whole organisation."""

    key: int  # the manager's person id (0: the organisation, or no manager)
    name: str
    email: str
    direct_reports: int
    due: int
    held_or_documented: int
    documented: int
    skipped: int
    completion_pct: float | None
    documented_pct: float | None
    delay_median_hours: float | None
    delay_p90_hours: float | None
    overdue_checkins: int
    overdue_pip_reviews: int
    overdue_action_items: int
    pips: int
    pip_states: dict[str, int]
    pip_outcomes: dict[str, int]

    @property
    def overdue_total(self) -> int:
        return self.overdue_checkins + self.overdue_pip_reviews + self.overdue_action_items


@dataclass(frozen=True)
class ConsistencyReport:
    organization: str
    as_of: dt.datetime
    period_from: dt.datetime | None
    period_to: dt.datetime | None
    org: Figures
    managers: tuple[Figures, ...]
    teams: tuple[Figures, ...]
    pip_states: tuple[str, ...]  # every state seen, sorted: the CSV's columns
    pip_outcomes: tuple[str, ...]


def _figures(
    key: int,
    name: str,
    email: str,
    direct_reports: int,
    checkins: Iterable[CheckinCount],
    delays: Iterable[Delay],
    overdue: Iterable[Overdue],
    pips: Iterable[PipFact],
) -> Figures:
    due = held = documented = skipped = 0
    for c in checkins:
        due += c.count
        if c.documented or c.state == OccurrenceState.HELD:
            held += c.count
        if c.documented:
            documented += c.count
        if c.state == OccurrenceState.SKIPPED:
            skipped += c.count
    hours = [d.hours for d in delays]
    kinds = Counter(o.kind for o in overdue)
    pip_list = list(pips)
    return Figures(
        key=key,
        name=name,
        email=email,
        direct_reports=direct_reports,
        due=due,
        held_or_documented=held,
        documented=documented,
        skipped=skipped,
        completion_pct=100 * held / due if due else None,
        documented_pct=100 * documented / due if due else None,
        delay_median_hours=percentile(hours, 0.5),
        delay_p90_hours=percentile(hours, 0.9),
        overdue_checkins=kinds["checkin"],
        overdue_pip_reviews=kinds["pip_review"],
        overdue_action_items=kinds["action_item"],
        pips=len(pip_list),
        pip_states=dict(sorted(Counter(p.state for p in pip_list).items())),
        pip_outcomes=dict(sorted(Counter(p.outcome for p in pip_list if p.outcome).items())),
    )


def aggregate(facts: Facts) -> ConsistencyReport:
    """Figures per manager, per team and for the organisation. Pure; same facts, same report."""
    reports: Counter[int] = Counter(
        p.manager_id for p in facts.people.values() if p.active and p.manager_id is not None
    )

    def grouped(attr: str) -> tuple[Figures, ...]:
        buckets: dict[int, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
        for name in ("checkins", "delays", "overdue", "pips"):
            for fact in getattr(facts, name):
                buckets[getattr(fact, attr)][name].append(fact)
        for manager_id in reports:
            buckets[manager_id]  # noqa: B018 - every manager with reports gets a row
        rows = []
        for key, parts in buckets.items():
            person = facts.people.get(key)
            rows.append(
                _figures(
                    key,
                    person.name if person else "(no manager)",
                    person.email if person else "",
                    reports[key],
                    parts["checkins"],
                    parts["delays"],
                    parts["overdue"],
                    parts["pips"],
                )
            )
        return tuple(sorted(rows, key=lambda f: (f.name.casefold(), f.email, f.key)))

    org = _figures(
        0,
        facts.organization,
        "",
        sum(1 for p in facts.people.values() if p.active and p.manager_id is not None),
        facts.checkins,
        facts.delays,
        facts.overdue,
        facts.pips,
    )
    return ConsistencyReport(
        organization=facts.organization,
        as_of=facts.as_of,
        period_from=facts.period_from,
        period_to=facts.period_to,
        org=org,
        managers=grouped("manager_id"),
        teams=grouped("team_id"),
        pip_states=tuple(sorted({p.state for p in facts.pips})),
        pip_outcomes=tuple(sorted({p.outcome for p in facts.pips if p.outcome})),
    )


def consistency_report(
    session: Session,
    organization_id: int,
    *,
    as_of: dt.datetime,
    period_from: dt.datetime | None = None,
    period_to: dt.datetime | None = None,
    business_weekdays: frozenset[int] = frozenset(range(5)),
    holidays: Iterable[dt.date] = (),
) -> ConsistencyReport:
    return aggregate(
        load_facts(
            session,
            organization_id,
            as_of=as_of,
            period_from=period_from,
            period_to=period_to,
            business_weekdays=business_weekdays,
            holidays=holidays,
        )
    )


# --------------------------------------------------------------------------- output

# The figures charted in the HTML: (attribute, title, unit). Bars per manager, a line for the
# organisation.
CHARTS = (
    ("completion_pct", "Check-in completion (held or documented / due)", "%"),
    ("documented_pct", "Documented check-ins (with a record / due)", "%"),
    ("delay_median_hours", "Documentation delay, median", "h"),
    ("delay_p90_hours", "Documentation delay, p90", "h"),
    ("overdue_total", "Overdue items (check-ins, PIP reviews, action items)", ""),
    ("pips", "PIPs in the period", ""),
)


def format_number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    return f"{text}{' ' + unit if unit == 'h' else unit}"


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, float | None]],
    *,
    reference: float | None = None,
    reference_label: str = "organisation",
    unit: str = "",
    width: int = 640,
) -> Markup:
    """A horizontal bar chart as inline SVG: one bar per (label, value), an optional vertical
    reference line. Labels are escaped; a None value draws no bar and prints a dash."""
    row, label_w, value_w, top = 22, 200, 70, 28
    plot_w = width - label_w - value_w
    values = [v for _, v in bars if v is not None] + ([reference] if reference is not None else [])
    scale_max = max(values, default=0) or 1
    height = top + row * len(bars) + 24
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        'font-family="system-ui, sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="16" font-weight="600">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(bars):
        y = top + i * row
        out.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        if value is not None:
            w = max(plot_w * value / scale_max, 0)
            out.append(
                f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
                'fill="#4a78b5"/>'
            )
        x = label_w + (plot_w * value / scale_max if value is not None else 0) + 6
        out.append(f'<text x="{x:.1f}" y="{y + 15}">{escape(format_number(value, unit))}</text>')
    if reference is not None:
        x = label_w + plot_w * reference / scale_max
        bottom = top + row * len(bars)
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#c0392b" '
            'stroke-width="2" stroke-dasharray="4 3"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#c0392b">'
            f"{escape(reference_label)}: {escape(format_number(reference, unit))}</text>"
        )
    out.append("</svg>")
    return Markup("\n".join(out))


def charts(report: ConsistencyReport) -> list[Markup]:
    return [
        bar_chart(
            title,
            [(f.name, getattr(f, attr)) for f in report.managers],
            reference=getattr(report.org, attr),
            unit=unit,
        )
        for attr, title, unit in CHARTS
    ]


def _when(moment: dt.datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "–"


def render_html(report: ConsistencyReport, templates_dir: Path) -> str:
    """The HTML report, rendered in the sandboxed, autoescaping template environment."""
    from automation.emails import render_text

    return render_text(
        templates_dir,
        "report/consistency.html",
        {
            "report": report,
            "charts": charts(report),
            "as_of": _when(report.as_of),
            "period_from": _when(report.period_from),
            "period_to": _when(report.period_to),
            "fmt": format_number,
        },
    )


# Spreadsheets run a cell starting with one of these as a formula (CSV injection).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def csv_columns(report: ConsistencyReport) -> list[str]:
    return [
        "manager_email",
        "manager_name",
        "direct_reports",
        "due",
        "held_or_documented",
        "documented",
        "skipped",
        "completion_pct",
        "documented_pct",
        "delay_median_hours",
        "delay_p90_hours",
        "overdue_checkins",
        "overdue_pip_reviews",
        "overdue_action_items",
        "pips",
        *(f"pips_{s}" for s in report.pip_states),
        *(f"pip_outcome_{o}" for o in report.pip_outcomes),
    ]


def render_csv(report: ConsistencyReport) -> str:
    """One row per manager; percentages and hours with two decimals, empty when undefined."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(csv_columns(report))
    for f in report.managers:
        writer.writerow(
            [
                _cell(v)
                for v in (
                    f.email,
                    f.name,
                    f.direct_reports,
                    f.due,
                    f.held_or_documented,
                    f.documented,
                    f.skipped,
                    f.completion_pct,
                    f.documented_pct,
                    f.delay_median_hours,
                    f.delay_p90_hours,
                    f.overdue_checkins,
                    f.overdue_pip_reviews,
                    f.overdue_action_items,
                    f.pips,
                    *(f.pip_states.get(s, 0) for s in report.pip_states),
                    *(f.pip_outcomes.get(o, 0) for o in report.pip_outcomes),
                )
            ]
        )
    return buffer.getvalue()


def as_json(report: ConsistencyReport) -> dict[str, Any]:
    def when(moment: dt.datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "organization": report.organization,
        "as_of": when(report.as_of),
        "period_from": when(report.period_from),
        "period_to": when(report.period_to),
        "org": asdict(report.org),
        "managers": [asdict(f) for f in report.managers],
        "teams": [asdict(f) for f in report.teams],
    }


def write_report(report: ConsistencyReport, folder: Path, templates_dir: Path) -> list[Path]:
    """consistency.html and consistency.csv in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    html, table = folder / "consistency.html", folder / "consistency.csv"
    html.write_text(render_html(report, templates_dir), encoding="utf-8")
    table.write_text(render_csv(report), encoding="utf-8", newline="")
    return [html, table]
