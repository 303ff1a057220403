"""``refattn conform package.module:function``: run the conformance kit from the shell.

Exit status 0 when the function conforms, 1 when the kit found a failure
(the report is printed), 2 for a usage error (bad target or capabilities).
``--capabilities`` takes a JSON object of :class:`refattn.testing.Capabilities`
fields, e.g. ``'{"lse": false, "causal": ["top_left"]}'``. A function that
has a ``capabilities`` attribute (a Capabilities or dict) supplies defaults.
"""

from __future__ import annotations

import importlib
import json
import sys


def load_target(target: str):
    """Import ``package.module:function`` (the function may be a dotted attribute path)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"target must look like package.module:function, got {target!r}")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target} is not callable")
    return obj


def main(args) -> int:
    from refattn.testing import Capabilities, check_attention
    from refattn.testing.check import DEFAULT_MAX_EXAMPLES

    try:
        fn = load_target(args.target)
        declared = getattr(fn, "capabilities", None)
        base = declared.__dict__.copy() if isinstance(declared, Capabilities) else dict(declared or {})
        if args.capabilities:
            given = json.loads(args.capabilities)
            if not isinstance(given, dict):
                raise ValueError("--capabilities must be a JSON object")
            base.update(given)
        capabilities = Capabilities.from_json(base)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        print(f"refattn conform: {exc}", file=sys.stderr)
        return 2
    max_examples = args.max_examples or DEFAULT_MAX_EXAMPLES
    report = check_attention(fn, capabilities=capabilities, max_examples=max_examples, name=args.target,
                             raise_on_failure=False)
    print(report.text())
    return 0 if report.passed else 1
