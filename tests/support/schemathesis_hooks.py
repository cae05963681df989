"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks``) for what an OpenAPI schema cannot
say, so that the fuzzer tests what the schema does say:

- a JSON request to ``/embed`` or ``/search`` may give an option in its body and in its query string only if both
  agree (else 400 ``conflicting_parameters``, as docs/serving.md says): generated cases keep it in the body only;
- ``/search``'s ``box`` is a part of the query image, so it must be ordered (x0 < x1, y0 < y1) and inside the image,
  whose size no schema knows, and it means something only with ``regions=true``; ``regions`` compares parts, so
  it goes with an image, not an id, and not with ``duplicates`` (whole images). Generated cases keep a box only
  with regions (as the whole image, ``0,0,1,1``), and drop regions where an id or duplicates is asked."""

from __future__ import annotations

import schemathesis

TRUE = {"true", "1", "yes", "on"}


def _truthy(value) -> bool:
    return value is True or str(value).strip().lower() in TRUE


@schemathesis.hook
def before_call(context, case, **kwargs) -> None:
    meta = getattr(case, "meta", None)
    modes = [meta.generation.mode, *(c.mode for c in meta.components.values())] if meta is not None else []
    if any(str(getattr(m, "value", m)).lower() == "negative" for m in modes):
        return  # a case meant to break the schema (in any part) is sent as generated
    if isinstance(case.body, dict) and case.query:
        for name in [n for n in case.query if case.body.get(n) is not None]:
            del case.query[name]
    places = [p for p in (case.query, case.body if isinstance(case.body, dict) else None) if p]
    if not places:
        return

    def given(name):
        return next((p[name] for p in places if p.get(name) is not None), None)

    regions = _truthy(given("regions")) if given("regions") is not None else False
    if regions and (given("id") is not None or (given("duplicates") is not None and _truthy(given("duplicates")))):
        regions = False
        for p in places:
            p.pop("regions", None)
    for p in places:
        if p.get("box") is not None:
            if regions:
                p["box"] = "0,0,1,1"
            else:
                del p["box"]
