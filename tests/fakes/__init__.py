"""Local stateful fakes of the provider HTTP APIs (Google Calendar, Microsoft Graph) and helpers
that start real servers (Radicale) for the tests and benchmarks."""
