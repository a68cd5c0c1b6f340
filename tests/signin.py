"""Accounts for the tests: made straight in the farm's Redis, as `renderfarm users` does."""

from __future__ import annotations

import contextlib

from redis import Redis

from dashboard.accounts import Accounts
from shared.config import Settings


def ensure_account(redis: Redis, name: str, role: str = "member") -> Accounts:
    accounts = Accounts(redis, Settings())
    if accounts.get(name) is None:
        with contextlib.suppress(ValueError):  # made meanwhile
            accounts.create(name, role)
    return accounts


def account_token(redis: Redis, name: str, role: str = "member") -> str:
    """A new API token of account `name` (created with `role` if it does not exist)."""
    return ensure_account(redis, name, role).create_token(name, label="tests")[1]
