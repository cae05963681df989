"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks``) for what an OpenAPI schema cannot
say: a JSON request to ``/embed`` or ``/search`` may give an option in its body and in its query string only if
both agree (else 400 ``conflicting_parameters``, as docs/serving.md says). Generated cases keep an option in the
body only, so the fuzzer tests what the schema does say."""

from __future__ import annotations

import schemathesis


@schemathesis.hook
def before_call(context, case, **kwargs) -> None:
    if isinstance(case.body, dict) and case.query:
        for name in [n for n in case.query if case.body.get(n) is not None]:
            del case.query[name]
