"""Small Sphinx fixes for the kltutor site (loaded through `local_extensions` in _config.yml).

- sphinx-thebe registers its inline configuration script twice under Sphinx 7.4, which makes the
  browser throw "Identifier 'THEBE_JS_URL' has already been declared" on every page; keep the
  first copy of each script.
"""

from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen = set()
    unique = []
    for js in scripts:
        # The same inline script is registered once with filename None and once with "".
        key = (getattr(js, "filename", str(js)) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=1000)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
