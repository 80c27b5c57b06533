"""Rank 1 asks for 2 connections per ring neighbour, the others for 1: init() must say so on every rank."""
import os

os.environ["RINGDIST_LANES"] = "2" if os.environ["RINGDIST_RANK"] == "1" else "1"

import ringdist as rd  # noqa: E402 - after the setting

try:
    rd.init()
except rd.ConfigError as exc:
    print(f"ConfigError: {exc}", flush=True)
    raise SystemExit(3)
print("init returned", flush=True)
