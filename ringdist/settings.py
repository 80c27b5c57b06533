"""Tunables read from the environment, validated once, with the defaults documented in the README."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError


def _number(env: dict[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value > minimum:
        raise ConfigError(f"{name}={raw!r} must be greater than {minimum:g}")
    return value


@dataclass(frozen=True)
class Settings:
    timeout: float = 300.0  # RINGDIST_TIMEOUT: seconds a collective may go without progress
    connect_timeout: float = 30.0  # RINGDIST_CONNECT_TIMEOUT: connect + handshake
    init_timeout: float = 120.0  # RINGDIST_INIT_TIMEOUT: waiting for every rank at the rendezvous
    lanes: int = 1  # RINGDIST_LANES: connections per ring neighbour
    verbose: bool = False  # RINGDIST_VERBOSE

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ) if env is None else env
        lanes = _number(env, "RINGDIST_LANES", 1, minimum=0)
        if lanes != int(lanes) or lanes > 16:
            raise ConfigError(f"RINGDIST_LANES={env.get('RINGDIST_LANES')!r} must be an integer from 1 to 16")
        return cls(
            timeout=_number(env, "RINGDIST_TIMEOUT", cls.timeout),
            connect_timeout=_number(env, "RINGDIST_CONNECT_TIMEOUT", cls.connect_timeout),
            init_timeout=_number(env, "RINGDIST_INIT_TIMEOUT", cls.init_timeout),
            lanes=int(lanes),
            verbose=env.get("RINGDIST_VERBOSE", "") not in ("", "0"),
        )
