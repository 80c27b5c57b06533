"""Rank 1 sets a variable every rank must share to another value: init() must say so on every rank.

usage: setting_differs.py NAME VALUE_ON_RANK_1 VALUE_ELSEWHERE
"""
import os
import sys

name, theirs, ours = sys.argv[1:4]
os.environ[name] = theirs if os.environ["RINGDIST_RANK"] == "1" else ours

import ringdist as rd  # noqa: E402 - after the setting

try:
    rd.init()
except rd.ConfigError as exc:
    print(f"ConfigError: {exc}", flush=True)
    raise SystemExit(3)
print("init returned", flush=True)
