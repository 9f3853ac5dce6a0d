"""Shared pieces of the MLS binding tests: deterministic keys and a member with its group."""

from __future__ import annotations

from dataclasses import dataclass

from openmls_bindings import Client, Group


def seed(n: int) -> bytes:
    return bytes([n]) * 32


@dataclass
class Member:
    client: Client
    group: Group | None = None

    @property
    def identity(self) -> bytes:
        return self.client.identity

    @property
    def g(self) -> Group:
        assert self.group is not None
        return self.group
