"""Dramatiq actors and the broker they run on. Import ``workers.broker`` before any actor."""
