"""Provider adapters: they map provider payloads to and from the domain types in ports.py."""
