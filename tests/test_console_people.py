"""The console's people pages: the organisation, an employee's timeline and the calendar."""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser

from sqlalchemy import event, select

from automation.db import transaction
from automation.models import CheckinSeries, ConversationRecord, Occurrence, Person
from automation.services import privacy
from tests.console_support import Console, console  # noqa: F401
from tests.test_loop import advance_until, deliver, outbox, reply_to

SCRIPT = "<script>alert('x')</script>"


class Tree(HTMLParser):
    """The reporting tree of the people page: each person's name -> their parent's name."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []  # the name of each open <li> of the tree
        self.parent: dict[str, str | None] = {}
        self.depth = 0  # inside <ul class="tree">
        self.in_link = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "ul" and ("class", "tree") in attrs:
            self.depth = 1
        elif self.depth and tag == "ul":
            self.depth += 1
        elif self.depth and tag == "li":
            self.stack.append(None)
        elif self.depth and tag == "a" and self.stack and self.stack[-1] is None:
            self.in_link = True

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag == "ul":
            self.depth -= 1
        elif self.depth and tag == "li":
            self.stack.pop()
        elif tag == "a":
            self.in_link = False

    def handle_data(self, data: str) -> None:
        if self.in_link:
            name = data.strip()
            parents = [n for n in self.stack[:-1] if n]
            self.parent[name] = parents[-1] if parents else None
            self.stack[-1] = name


def tree_of(page: str) -> dict[str, str | None]:
    parser = Tree()
    parser.feed(page)
    return parser.parent


def checkin_links(page: str) -> set[int]:
    """The occurrence ids the calendar page lists."""
    return {int(n) for n in re.findall(r"#checkin-(\d+)", page)}


def occurrences_between(console: Console, start: dt.datetime, end: dt.datetime) -> dict[int, str]:  # noqa: F811
    """Occurrence id -> employee address, for check-ins starting in [start, end)."""
    with console.rt.factory() as session:
        rows = session.execute(
            select(Occurrence.id, Person.email)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(
                Occurrence.organization_id == console.org,
                Occurrence.start_at >= start,
                Occurrence.start_at < end,
            )
        ).all()
    return dict(rows)  # type: ignore[arg-type]


def test_the_organisation_is_a_tree_of_reporting_lines(console: Console) -> None:  # noqa: F811
    console.sign_in("hr@acme.test", role="hr_partner")
    page = console.client.get("/console/people")
    assert page.status_code == 200
    assert tree_of(page.text) == {
        "Cleo Chief": None,
        "Bea Boss": "Cleo Chief",
        "Hal Hr": "Cleo Chief",
        "Max Other": "Cleo Chief",
        "Ana Souza": "Bea Boss",
        "Kai Tanaka": "Bea Boss",
        "Zoe Elsewhere": "Max Other",
    }
    counts = dict(
        (label, int(n))
        for n, label in re.findall(r"<strong>(\d+)</strong> ([a-z ]+)</li>", page.text)
    )
    assert counts == {"people": 7, "managers": 3, "without a manager": 1}
    assert "3 direct reports" in page.text  # the CEO's
    assert "Europe/Paris" in page.text and "HR partner Hal Hr" in page.text


def test_the_filter_shows_matches_with_their_manager_chain(console: Console) -> None:  # noqa: F811
    console.sign_in("hr@acme.test")
    by_name = console.client.get("/console/people", params={"q": "ZOE"}).text
    assert tree_of(by_name) == {
        "Cleo Chief": None,
        "Max Other": "Cleo Chief",
        "Zoe Elsewhere": "Max Other",
    }
    assert by_name.count('class="match"') == 1
    by_address = console.client.get("/console/people", params={"q": "kai@ACME"}).text
    assert set(tree_of(by_address)) == {"Cleo Chief", "Bea Boss", "Kai Tanaka"}
    nobody = console.client.get("/console/people", params={"q": "nobody-here"}).text
    assert tree_of(nobody) == {} and "Nobody matches." in nobody


def test_a_manager_sees_only_their_chain(console: Console) -> None:  # noqa: F811
    ids = {e: console.person(f"{e}@acme.test").id for e in ("ana", "kai", "zoe", "max", "ceo")}
    console.sign_in("boss@acme.test", role="manager")
    page = console.client.get("/console/people")
    assert tree_of(page.text) == {"Ana Souza": None, "Kai Tanaka": None}
    assert "Zoe" not in page.text and "Max" not in page.text
    assert console.client.get("/console/people", params={"q": "zoe"}).text.count("Zoe") == 0
    assert console.client.get(f"/console/people/{ids['ana']}").status_code == 200
    for outside in ("zoe", "max", "ceo"):
        refused = console.client.get(f"/console/people/{ids[outside]}")
        assert refused.status_code == 404, outside
        assert "Elsewhere" not in refused.text
    assert console.client.get("/console/people/999999").status_code == 404

    now = console.rt.now()
    window = occurrences_between(console, now, now + dt.timedelta(days=14))
    zoes = {o for o, e in window.items() if e == "zoe@acme.test"}
    chain = {o for o, e in window.items() if e in ("ana@acme.test", "kai@acme.test")}
    assert zoes and chain  # so that the assertions below can fail
    calendar = console.client.get("/console/calendar").text
    assert checkin_links(calendar) == chain
    assert "Zoe Elsewhere" not in calendar
    # Naming Zoe's manager in the filter does not reach past the chain either.
    only_max = console.client.get("/console/calendar", params={"manager": str(ids["max"])})
    assert only_max.status_code == 200 and checkin_links(only_max.text) == set()
    console.sign_in("hr@acme.test", role="hr_partner")
    everyone = console.client.get("/console/calendar").text
    assert zoes <= checkin_links(everyone) and chain <= checkin_links(everyone)


def test_the_calendar_pages_by_week_and_filters_by_manager(console: Console) -> None:  # noqa: F811
    console.sign_in("hr@acme.test", role="hr_partner")
    now = console.rt.now()
    for week in (0, 1, 2):
        start = now + dt.timedelta(weeks=week)
        expected = set(occurrences_between(console, start, start + dt.timedelta(days=14)))
        page = console.client.get("/console/calendar", params={"week": str(week)})
        assert page.status_code == 200
        assert checkin_links(page.text) == expected, week
    first, third = (
        checkin_links(console.client.get("/console/calendar", params={"week": w}).text)
        for w in ("0", "2")
    )
    assert first and third and not first & third  # two fortnights, no check-in in both
    assert (
        'href="/console/calendar?week=3"'
        in console.client.get("/console/calendar", params={"week": "2"}).text
    )
    # Garbage in the query is ignored rather than answered with an error.
    assert console.client.get("/console/calendar", params={"week": "x", "manager": "y"}).is_success

    boss = console.person("boss@acme.test")
    window = occurrences_between(console, now, now + dt.timedelta(days=14))
    answered = min(o for o, e in window.items() if e == "ana@acme.test")
    with transaction(console.rt.factory) as session:
        occurrence = session.get(Occurrence, answered)
        assert occurrence is not None
        occurrence.responses = {"ana@acme.test": "ACCEPTED", "boss@acme.test": "TENTATIVE"}
    mine = console.client.get("/console/calendar", params={"manager": str(boss.id)}).text
    assert checkin_links(mine) == {
        o for o, e in window.items() if e in ("ana@acme.test", "kai@acme.test")
    }
    assert f'<option value="{boss.id}" selected>' in mine
    # Each check-in shows at its series' wall-clock time, with both people's responses.
    assert re.search(r"\d\d:\d\d (CET|JST)", mine)
    row = mine[mine.index(f"#checkin-{answered}") :]
    row = row[: row.index("</tr>")]
    assert 'Ana Souza <span class="response-accepted">accepted</span>' in row
    assert 'Bea Boss <span class="response-tentative">tentative</span>' in row
    assert 'Kai Tanaka <span class="response-needs-action">' in mine  # no answer yet


def _documented_twice(console: Console, clock) -> Occurrence:  # type: ignore[no-untyped-def]  # noqa: F811
    """Ana's first check-in documented by Bea's reply, then corrected by a second reply to the
    confirmation: two versions of one record, through the real inbound path."""
    with console.rt.factory() as session:
        ana = console.person("ana@acme.test")
        first = session.scalars(
            select(Occurrence)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .where(CheckinSeries.employee_id == ana.id)
            .order_by(Occurrence.start_at)
        ).first()
        assert first is not None
        session.expunge(first)
    advance_until(console.rt, clock, first.end_at + dt.timedelta(hours=2))
    (prompt,) = [m for m in outbox(console.rt, "followup") if m.occurrence_id == first.id]
    deliver(
        console.rt,
        reply_to(
            console.rt,
            prompt,
            "Bea Boss <boss@acme.test>",
            f"1. Shipped the docs {SCRIPT}\nRating: 3\nAction: Ana to draft the plan by Friday\n",
        ),  # fmt: skip
        "v1",
    )
    (confirmation,) = [m for m in outbox(console.rt, "confirmation") if m.occurrence_id == first.id]
    deliver(
        console.rt,
        reply_to(
            console.rt, confirmation, "boss@acme.test", "1. Shipped the docs and the demo.\n4. 4\n"
        ),
        "v2",
    )
    with console.rt.factory() as session:
        versions = session.scalars(
            select(ConversationRecord.version).where(ConversationRecord.subject_id == first.id)
        ).all()
    assert sorted(versions) == [1, 2]
    return first


def test_the_timeline_shows_every_version_of_a_record(console: Console, clock) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    first = _documented_twice(console, clock)
    ana = console.person("ana@acme.test")
    console.sign_in("boss@acme.test", role="manager")
    page = console.client.get(f"/console/people/{ana.id}")
    assert page.status_code == 200
    text = page.text
    entry = text[text.index(f'id="checkin-{first.id}"') :]
    entry = entry[: entry.index("</li>\n", entry.index("</section>"))]
    # The latest version first; the one it corrects kept, in full, under <details>.
    v2, details, v1 = (
        entry.index("Version 2"), entry.index("<details>"), entry.index("Version 1")
    )  # fmt: skip
    assert v2 < details < v1
    assert "Corrects version 1." in entry and "Corrected by version 2." in entry
    assert "Shipped the docs and the demo." in entry[v2:details]
    assert "Rating: <strong>4</strong>" in entry[v2:details]
    assert "Rating: <strong>3</strong>" in entry[v1:]
    assert "draft the plan" in entry[v1:]  # the action item of version 1
    assert "What went well since your last check-in?" in entry  # the question asked
    assert "documented" in entry and "Bea Boss" in entry
    # What the manager wrote is shown as text, never as markup.
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in entry
    assert SCRIPT not in text
    # Other check-ins of Ana are on the timeline, the newest first.
    starts = [int(n) for n in re.findall(r'id="checkin-(\d+)"', text)]
    assert len(starts) > 1 and first.id in starts
    with console.rt.factory() as session:
        shown = session.scalars(select(Occurrence).where(Occurrence.id.in_(starts)))
        order = {o.id: o.start_at for o in shown}
    assert [order[i] for i in starts] == sorted(order.values(), reverse=True)
    # Bea is not in her own chain: her name is shown, not a link that would answer 404.
    assert "<dt>Manager</dt><dd>Bea Boss</dd>" in text
    console.sign_in("hr@acme.test")
    boss = console.person("boss@acme.test")
    as_hr = console.client.get(f"/console/people/{ana.id}").text
    assert f'<dt>Manager</dt><dd><a href="/console/people/{boss.id}">Bea Boss</a></dd>' in as_hr


def _pip_warning_and_goal(console: Console, clock) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A PIP for Ana with a review left undocumented until it escalates, a written warning
    (awaiting her acknowledgement) and a goal updated once (two versions)."""
    from automation.config import PipPlan
    from automation.domain.cadence import LadderStep
    from automation.services import goals, pips
    from automation.services.escalation import start_pip

    rt = console.rt
    with transaction(rt.factory) as session:
        start_pip(
            rt, session, console.org,
            PipPlan(
                "ana@acme.test", "30-day plan", 0, 30, (("Week 1 review", 7),),
                (LadderStep(1, "manager", "reminder"), LadderStep(3, "hr_partner", "escalation")),
            ),
            clock.now(),
        )  # fmt: skip
        ana = session.scalar(select(Person).where(Person.email == "ana@acme.test"))
        assert ana is not None
        pips.create_warning(
            rt, session, console.org, ana, reason="Missed the <b>release</b> review",
            expectation="Attend every review", actor="test",
        )  # fmt: skip
        goals.set_goal(
            session, console.org, "ana@acme.test", "Ship the onboarding guide", rt.now(),
            actor="test", status="on_track",
        )  # fmt: skip
    advance_until(rt, clock, clock.now() + dt.timedelta(days=12))
    with transaction(rt.factory) as session:
        goals.set_goal(
            session, console.org, "ana@acme.test", "Ship the onboarding guide", rt.now(),
            actor="test", status="at_risk", note="Blocked on legal",
        )  # fmt: skip


def test_the_timeline_shows_pips_reviews_warnings_and_goals(console: Console, clock) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _pip_warning_and_goal(console, clock)
    ana = console.person("ana@acme.test")
    console.sign_in("boss@acme.test", role="manager")
    page = console.client.get(f"/console/people/{ana.id}").text
    pip = page[page.index('class="entry pip"') :]
    pip = pip[: pip.index('class="entry', 10)] if 'class="entry' in pip[10:] else pip
    assert "PIP: 30-day plan" in pip and "Review: Week 1 review" in pip
    assert "not documented" in pip
    # The review's ladder: the reminder to Bea, then the escalation to Hal, newest first.
    assert pip.index("Escalation (step 2)") < pip.index("Reminder (step 1)")
    assert "sent to Hal Hr" in pip and "sent to Bea Boss" in pip
    assert "Written warning" in page
    assert "Missed the &lt;b&gt;release&lt;/b&gt; review" in page and "<b>release" not in page
    assert "Acknowledgement by Ana Souza" in page and "awaited" in page
    goals = page[page.index("<h2>Goals</h2>") :]
    assert goals.index("Version 2") < goals.index("<details>") < goals.index("Version 1")
    assert "at risk" in goals and "Blocked on legal" in goals and "on track" in goals
    assert "replaces version 1" in goals


def test_an_erased_record_says_so_and_shows_nothing_of_it(console: Console, clock) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    first = _documented_twice(console, clock)
    _pip_warning_and_goal(console, clock)
    with transaction(console.rt.factory) as session:
        ana = session.scalar(select(Person).where(Person.email == "ana@acme.test"))
        assert ana is not None
        privacy.erase_person(session, ana, console.rt.now(), actor="test", request_id=None)
        ana_id = ana.id
    console.sign_in("hr@acme.test")
    page = console.client.get(f"/console/people/{ana_id}").text
    # Both versions of the record, the warning and both versions of the goal.
    assert page.count("its content was removed") == 5
    for content in ("Shipped the docs", "draft the plan", "release", "onboarding", "legal"):
        assert content not in page, content
    assert "Version 2" in page and "Version 1" in page  # the skeleton remains
    assert 'badge state-erased">erased' in page
    assert f'id="checkin-{first.id}"' in page
    assert 'badge state-erased">erased' in console.client.get("/console/people").text


def test_names_and_addresses_are_escaped(console: Console) -> None:  # noqa: F811
    with transaction(console.rt.factory) as session:
        zoe = session.scalar(select(Person).where(Person.email == "zoe@acme.test"))
        assert zoe is not None
        zoe.name, zoe.role = "Zoe <b>Bold</b>", "<i>role</i>"
        zoe.mail_failing_since, zoe.mail_failing_reason = console.rt.now(), 'said "<no>"'
    console.sign_in("hr@acme.test")
    for path in ("/console/people", f"/console/people/{zoe.id}", "/console/calendar"):
        page = console.client.get(path, params={"q": "<b>"} if path.endswith("people") else {})
        assert page.status_code == 200, path
        assert "Zoe &lt;b&gt;Bold&lt;/b&gt;" in page.text, path
        assert "<b>Bold" not in page.text and "<i>role" not in page.text, path
    people = console.client.get("/console/people", params={"q": '"><script>'}).text
    assert 'value="&#34;&gt;&lt;script&gt;"' in people and '"><script>' not in people
    assert "mail failing" in console.client.get("/console/people").text


def test_the_pages_read_people_in_a_fixed_number_of_queries(console: Console) -> None:  # noqa: F811
    console.sign_in("hr@acme.test")
    ana = console.person("ana@acme.test")

    def statements(path: str) -> int:
        seen: list[str] = []

        def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
            seen.append(statement)

        event.listen(console.rt.engine, "before_cursor_execute", count)
        try:
            assert console.client.get(path).status_code == 200
        finally:
            event.remove(console.rt.engine, "before_cursor_execute", count)
        return len(seen)

    paths = ("/console/people", f"/console/people/{ana.id}", "/console/calendar")
    before = {p: statements(p) for p in paths}
    now = console.rt.now()
    boss = console.person("boss@acme.test")
    with transaction(console.rt.factory) as session:
        for n in range(30):
            session.add(
                Person(
                    organization_id=console.org,
                    email=f"extra{n}@acme.test",
                    name=f"Extra {n}",
                    timezone="Europe/Paris",
                    manager_id=boss.id if n < 15 else ana.id,
                    hr_partner_id=boss.id,
                    created_at=now,
                    updated_at=now,
                )  # fmt: skip
            )
    after = {p: statements(p) for p in paths}
    assert after == before
    assert max(after.values()) < 30
    assert "Extra 29" in console.client.get(f"/console/people/{ana.id}").text  # a report
