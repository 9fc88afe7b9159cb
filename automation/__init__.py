"""Check-in automation: recurring check-ins, agendas, reply-documented records, escalations."""

__version__ = "0.1.0"
