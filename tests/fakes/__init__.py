"""Fakes for the gateway's tests: real implementations of the Protocols and of the providers' HTTP APIs."""

from .upstream import FakeUpstream, FakeUsage, Fault, RecordedRequest

__all__ = ["FakeUpstream", "FakeUsage", "Fault", "RecordedRequest"]
