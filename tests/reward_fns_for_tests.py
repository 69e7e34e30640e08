"""Misbehaving reward functions for SafeRewardCaller tests, loaded as ``tests.reward_fns_for_tests:NAME``."""

from __future__ import annotations

import os
import time
from typing import Any


def boom(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    raise RuntimeError("boom from a user reward function")


def hang(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    time.sleep(3600)
    return 1.0


def hang_on_x(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    if response == "x":
        time.sleep(3600)
    return float(len(response))


def nan(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    return float("nan")


def text(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> str:
    return "1.0"


def verl_dict(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> dict[str, float]:
    return {"score": 0.5, "acc": 1.0}


def die(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    os._exit(3)


def chatty(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    for _ in range(100):
        print("x" * 100_000)  # 10 MB of output
    return 0.25


def has_digit(data_source: str, response: str, ground_truth: str, extra_info: dict[str, Any]) -> float:
    """0/1: the reply has a digit (about half the tiny random model's 16-token replies do)."""
    return float(any(c.isdigit() for c in response))
