"""Sample contexts for every template: previews without sending, and the template tests.

Each sample carries exactly the variables the service passes to that template, shaped and
formatted as ``automation/services`` formats them (times as strings in the recipient's zone,
due dates as ISO dates, labels worded for the manager), as plain dicts and lists: Jinja reads
``manager.name`` from a dict key. The manager's name deliberately holds characters that HTML
must escape (``'``, ``<``, ``>``) and the organisation's name an ``&``, so a preview or a test
shows at once that autoescape is on.

``automation templates preview NAME`` renders ``sample_context(NAME)``.
"""

from __future__ import annotations

import copy
from typing import Any

# A real name (non-ASCII, apostrophe) plus markup that must come out escaped in HTML.
MANAGER_NAME = "Zoë O'Brien <script>"

_ORG = {"name": "Northwind & Co"}
_PREFERENCES_URL = "https://checkins.example.com/preferences"

_MANAGER = {"name": MANAGER_NAME, "email": "zoe.obrien@example.com"}
_EMPLOYEE = {"name": "Ana Souza", "email": "ana.souza@example.com"}
_HR_PARTNER = {"name": "Priya Raman", "email": "priya.raman@example.com"}

_OCCURRENCE = {
    "title": f"1:1 {MANAGER_NAME} / Ana Souza",
    "when": "Tuesday 10 March 2026, 10:00 (Europe/Berlin)",
    "duration_minutes": 30,
}

_QUESTIONS = [
    "What has gone well since your last check-in?",
    "What is getting in the way, and what support would help?",
    "What are the priorities until the next check-in?",
    "Any feedback, in either direction?",
]

# A review asks the documentation its PIP's template requires (config/pips/*.toml).
_PIP_QUESTIONS = [
    "Goals and their measurable success criteria (still as agreed?)",
    "Support provided since the last review",
    "Progress against each goal, with evidence",
    "Outcome of this review (on track / at risk / not met)",
]

# As the escalation service words it: for the manager, and passed unchanged to every step of
# the ladder (the escalation template rewords it for a third party).
_CHECKIN_LABEL = "your check-in with Ana Souza on Tuesday 10 March"
# Every step of a ladder gets the same item: the label, when it takes place, when it was due
# (for a check-in, its end), whether the step comes before that (a negative offset) and who
# documents it.
_CHECKIN_ITEM = {
    "label": _CHECKIN_LABEL,
    "when": _OCCURRENCE["when"],
    "due": "Tuesday 10 March 2026, 10:30 (Europe/Berlin)",
    "upcoming": False,
    "documenter": MANAGER_NAME,
}


def _common(recipient: dict[str, str]) -> dict[str, Any]:
    return {"org": _ORG, "recipient": recipient, "preferences_url": _PREFERENCES_URL}


SAMPLES: dict[str, dict[str, Any]] = {
    "agenda": {
        **_common(_EMPLOYEE),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "occurrence": _OCCURRENCE,
        "questions": _QUESTIONS,
        # As automation.services.agendas.agenda_context shapes them: numbered as on the
        # manager's copy ("#done 2" closes item 2), with their age. Without number and age
        # (an agenda built before the agenda context) the list still renders.
        "open_action_items": [
            {
                "number": 1,
                "text": "Share the Q2 roadmap draft",
                "owner": "Ana Souza",
                "due": "2026-03-13",
                "age": "open 3 weeks",
                "overdue": False,
            },
            {
                "number": 2,
                "text": "Book the conference training",
                "owner": MANAGER_NAME,
                "due": "2026-02-27",
                "age": "open 5 weeks",
                "overdue": True,
            },
            {
                "number": 3,
                "text": "Pair with Lee on the billing migration",
                "owner": None,
                "due": None,
                "age": "open 4 days",
                "overdue": False,
            },
        ],
        # Open goals with their latest status; the role's priorities (config/roles).
        "goals": [
            {
                "title": "Ship the invoice export",
                "success_criteria": "Used by 20 customers, fewer than 2 support tickets a week",
                "owner": "Ana Souza",
                "due": "2026-04-30",
                "status": "on_track",
                "status_label": "on track",
                "updated": "updated 1 week ago",
            },
            {
                "title": "Lead the billing migration design review",
                "success_criteria": "Design approved by the architecture group",
                "owner": "Ana Souza",
                "due": None,
                "status": "at_risk",
                "status_label": "at risk",
                "updated": "updated 5 weeks ago",
            },
        ],
        "role": {
            "title": "Software engineer",
            "priorities": [
                "Reliability of the services the team owns",
                "Shipping the roadmap items committed for the quarter",
            ],
            "success_criteria": [
                "Delivers the work agreed for the sprint, or flags the risk two days ahead",
            ],
        },
        # While a PIP is active (else None).
        "pip": {
            "title": "90-day performance improvement plan",
            "ends_on": "31 May 2026",
            "goals": [
                {
                    "position": 1,
                    "goal": "Answer customer tickets on time",
                    "success_criteria": "95% of tickets answered within 2 business days",
                    "owner": "Ana Souza",
                    "due": "2026-04-30",
                },
            ],
        },
        # Development items due for discussion.
        "development_items": [
            {
                "kind": "skill",
                "kind_label": "Skill to build",
                "text": "Present a design to the architecture group",
                "discuss_by": "2026-03-10",
            },
            {
                "kind": "support",
                "kind_label": "Agreed support",
                "text": "Two hours a week of pairing with Lee",
                "discuss_by": "2026-03-10",
            },
        ],
        # Topics either person added by replying ("+ topic"); "new" on an update only.
        "topics": [
            {
                "text": "Conference budget for the autumn",
                "added_by": "Ana Souza",
                "added_on": "6 March 2026",
                "carried_over": False,
                "new": False,
            },
            {
                "text": "On-call rota after the launch",
                "added_by": MANAGER_NAME,
                "added_on": "24 February 2026",
                "carried_over": True,
                "new": False,
            },
        ],
        # Coaching prompts: passed for the manager's copy only, and shown only there.
        "coaching": [
            {
                "trigger": "action_item_overdue",
                "title": "An action item is overdue again",
                "why": [
                    "[2] Book the conference training: due 27 Feb 2026, overdue at 2 check-ins"
                ],
                "suggestion": "Ask what got in the way before asking for a new date.",
                "document": "The reason it slipped and the new due date.",
            },
        ],
        # True for an update sent when topics arrive after the agenda went out.
        "agenda_update": False,
    },
    "followup": {
        **_common(_MANAGER),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "occurrence": _OCCURRENCE,
        "questions": _QUESTIONS,
        "commands_help": True,
    },
    "confirmation": {
        **_common(_MANAGER),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "occurrence": _OCCURRENCE,
        "record": {
            "version": 2,
            "answers": [
                {
                    "number": 1,
                    "question": _QUESTIONS[0],
                    "answer": "Shipped the invoice export a week early.\nCustomers already use it.",
                },
                {
                    "number": 2,
                    "question": _QUESTIONS[1],
                    "answer": "Waiting on access to the staging database.",
                },
                {"number": 3, "question": _QUESTIONS[2], "answer": "Billing migration plan."},
                {"number": 4, "question": _QUESTIONS[3], "answer": ""},
            ],
            "rating": 4,
            "action_items": [
                {
                    "text": "Request staging access for Ana",
                    "owner": MANAGER_NAME,
                    "due": "2026-03-11",
                },
                {
                    "text": "Draft the billing migration plan",
                    "owner": "Ana Souza",
                    "due": "2026-03-20",
                },
            ],
            "commands": [],
            "notes": "Ana would like to present the export at the next all-hands.",
            # For a PIP review whose reviewer left required items unanswered: number, question.
            "missing": [],
        },
    },
    "pip_plan": {
        **_common(_EMPLOYEE),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "pip": {
            "title": "90-day performance improvement plan",
            "starts_on": "2 March 2026",
            "ends_on": "31 May 2026",
            "duration_days": 90,
        },
        "goals": [
            {
                "goal": "Answer customer tickets on time",
                "success_criteria": "95% of tickets answered within 2 business days",
                "owner": "Ana Souza",
                "due": "2026-04-30",
            },
            {
                "goal": "Weekly written status update",
                "success_criteria": "Sent every Friday by 17:00",
                "owner": "Ana Souza",
                "due": None,
            },
        ],
        "checkins": {"first": "Tuesday 10 March 2026, 10:00 (Europe/Berlin)"},
        "reviews": [
            {"name": "Day 30 review", "when": "Wednesday 1 April 2026, 10:00 (Europe/Berlin)"},
            {"name": "Final review", "when": "Sunday 31 May 2026, 10:00 (Europe/Berlin)"},
        ],
        "acknowledge_by": "Thursday 5 March 2026, 10:00 (Europe/Berlin)",
    },
    "warning": {
        **_common(_EMPLOYEE),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "warning": {
            "title": "Written warning",
            "issued_on": "10 March 2026",
            "issued_by": MANAGER_NAME,
            "reason": "Missed three customer deadlines in February without notice.",
            "expectation": "Flag any risk to a deadline at least two days ahead.",
            "consequence": "A further missed deadline may lead to a performance plan.",
        },
        "acknowledge_by": "Friday 13 March 2026, 10:00 (Europe/Berlin)",
    },
    "unacknowledged": {
        **_common(_EMPLOYEE),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "item": {
            "label": "the 90-day performance improvement plan",
            "when": "Thursday 5 March 2026, 10:00 (Europe/Berlin)",
            "due": "Thursday 5 March 2026, 10:00 (Europe/Berlin)",
            "upcoming": False,
            "documenter": "Ana Souza",
        },
        "days_overdue": 1,
        "step": 1,
    },
    "reminder": {
        **_common(_MANAGER),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "item": dict(_CHECKIN_ITEM),
        "days_overdue": 3,
        "step": 1,
    },
    "escalation": {
        **_common(_HR_PARTNER),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "item": dict(_CHECKIN_ITEM),
        "days_overdue": 7,
        "step": 2,
    },
    "pip_review": {
        **_common(_MANAGER),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "pip": {"title": "30-day performance improvement plan", "ends_on": "09 April 2026"},
        "review": {
            "name": "Week 2 review",
            "when": "Tuesday 24 March 2026, 09:00 (Europe/Berlin)",
            "reviewer": "manager",  # or "hr_partner", when the template says so
            "requires_all": True,  # documented once every question is answered
        },
        "goals": [
            {
                "position": 1,
                "goal": "Answer customer tickets on time",
                "success_criteria": "95% of tickets answered within 2 business days",
                "due": "2026-04-30",
            },
            {
                "position": 2,
                "goal": "Weekly written status update",
                "success_criteria": "Sent every Friday by 17:00",
                "due": None,
            },
        ],
        "questions": _PIP_QUESTIONS,
    },
    "confirmation_acknowledgement": {
        **_common(_EMPLOYEE),
        "acknowledgement": {
            "what": "the 90-day performance improvement plan starting 02 March 2026",
            "when": "Wednesday 04 March 2026, 16:12 (Europe/Berlin)",
            "comment": "Received. I would like the ticket target reviewed\nafter the first month.",
        },
    },
    "quarantine_notice": {
        **_common({"name": "Sam Taylor", "email": "sam.taylor@example.net"}),
        "reason": "sender sam.taylor@example.net is not a participant of this occurrence",
    },
    "address_failing": {
        **_common(_HR_PARTNER),
        "person": _MANAGER,
        "reason": "5.1.1 smtp; 550 5.1.1 <zoe.obrien@example.com>: Recipient address rejected",
    },
    "invite": {
        **_common(_EMPLOYEE),
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        # As automation.services.imip words it; "method" is "REQUEST" or "CANCEL".
        "invite": {
            "method": "REQUEST",
            "updated": False,
            "title": _OCCURRENCE["title"],
            "schedule": "Every 2 weeks on Tuesday, 10:00 (Europe/Berlin)",
            "next": _OCCURRENCE["when"],
            "duration_minutes": 30,
        },
    },
    "invite/description.txt": {
        "org": _ORG,
        "manager": _MANAGER,
        "employee": _EMPLOYEE,
        "questions": _QUESTIONS,
    },
}


def sample_context(name: str) -> dict[str, Any]:
    """A fresh copy of the sample context for one template (an email name or a template path)."""
    try:
        return copy.deepcopy(SAMPLES[name])
    except KeyError:
        known = ", ".join(sorted(SAMPLES))
        raise KeyError(f"no sample context for template {name!r}; known: {known}") from None
