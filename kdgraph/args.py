"""The command line's positional arguments: graph files and key=value overrides, told apart."""

from __future__ import annotations

import argparse
from pathlib import Path


def split_args(items: list[str]) -> tuple[list[str], list[str]]:
    """Graph files and overrides from one argument list.

    An override has '=' or starts with '~'/'+'; an item that is neither a file nor a .yaml name is
    taken as an override too (`train.epochs` without a value), so its problem is named as such.
    """
    files, overrides = [], []
    for item in items:
        looks_like_file = item.endswith((".yaml", ".yml")) or _exists(item) or "/" in item
        is_override = "=" in item or item.startswith(("~", "+")) or (files and not looks_like_file)
        (overrides if is_override else files).append(item)
    return files, overrides


def _exists(item: str) -> bool:
    """Whether the item names an existing path (a name too long for the file system names none)."""
    try:
        return Path(item).exists()
    except (OSError, ValueError):
        return False


def with_preset(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """`--preset NAME` is the override `preset=NAME` placed first, so the other overrides win (presets.py)."""
    preset = getattr(args, "preset", None)
    return ([f"preset={preset}"] if preset else []) + overrides


def count(low: int, high: int = 10**9):
    """An argparse type: an integer in [low, high] (a batch, a step count), else argparse's one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {low} to {high:,}")
        return value

    parse.__name__ = "count"  # argparse names the type in its messages
    return parse
