"""The one user-error type (level 0: standard library only, so that every floor can raise it).

A `UserError` is a mistake the user can fix: a bad flag or config value, a missing or damaged file, data that does
not fit the model, an environment that lacks a package or weights. Its message says what is wrong, where, and how
to fix it. Every stage runs under `gigatok.infra.cli.run_stage`, which prints it as `error: <message>` and exits with
code 2, without a traceback; anything else is a bug and keeps its traceback.

Subclasses only name the domain (config, checkpoint, codes, images, evaluator, weights), so that a caller can react
to one kind (e.g. skip an unreadable checkpoint); they keep a builtin base (ValueError, FileNotFoundError) where
callers or users relied on it before.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user must fix; printed as one `error: ...` paragraph with exit code 2 (no traceback)."""
