"""``refattn conform package.module:function``: run the conformance kit from the shell.

Exit status 0 when the function conforms, 1 when the kit found a failure
(the report is printed), 2 for a usage error (bad target, flag or capabilities).
``--capabilities`` takes a JSON object of :class:`refattn.testing.Capabilities`
fields, e.g. ``'{"causal": ["top_left"], "dtypes": ["float32"]}'``. A function
that has a ``capabilities`` attribute (a Capabilities or dict) supplies
defaults, which the flag's fields override.

Like ``python -m``, the target is imported with the current directory first
on the import path, so ``refattn conform mykernel:attention`` finds
``./mykernel.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys


class UsageError(ValueError):
    pass


def load_target(target: str):
    """Import ``package.module:function`` (the function may be a dotted attribute path), cwd first."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"target must look like package.module:function, got {target!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} (looked in {cwd} and on sys.path): {exc}") from None
    except Exception as exc:  # the module itself failed while importing
        raise UsageError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise UsageError(f"{target} is not callable")
    return obj


def capabilities_for(fn, text: str | None, target: str):
    """The function's own ``capabilities`` attribute, updated with the ``--capabilities`` JSON."""
    from refattn.testing import Capabilities

    declared = getattr(fn, "capabilities", None)
    try:
        base = declared.__dict__.copy() if isinstance(declared, Capabilities) else dict(declared or {})
    except (TypeError, ValueError):
        raise UsageError(f"{target}.capabilities must be a Capabilities or a dict, got {declared!r}") from None
    if text:
        try:
            given = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--capabilities is not valid JSON ({exc.msg} at column {exc.colno}): {text}") from None
        if not isinstance(given, dict):
            raise UsageError(f"--capabilities must be a JSON object such as '{{\"lse\": false}}', got {text}")
        base.update(given)
    try:
        return Capabilities.from_json(base)
    except (TypeError, ValueError) as exc:
        source = "--capabilities" if text else f"{target}.capabilities"
        raise UsageError(f"{source}: {exc}") from None


def main(args) -> int:
    from refattn.testing import check_attention
    from refattn.testing.check import DEFAULT_MAX_EXAMPLES

    try:
        if args.max_examples is not None and args.max_examples < 1:
            raise UsageError(f"--max-examples must be at least 1, got {args.max_examples}")
        fn = load_target(args.target)
        capabilities = capabilities_for(fn, args.capabilities, args.target)
    except UsageError as exc:
        print(f"refattn conform: {exc}", file=sys.stderr)
        return 2
    max_examples = DEFAULT_MAX_EXAMPLES if args.max_examples is None else args.max_examples
    report = check_attention(fn, capabilities=capabilities, max_examples=max_examples, name=args.target,
                             seed=getattr(args, "seed", None), raise_on_failure=False)
    print(report.text())
    return 0 if report.passed else 1
