"""ControlZ's HTML: one layout (title, topic menu, content) and a renderer per kind of page.

Everything shown is escaped. The scope page's level selects and the memory page's collect
button talk to the JSON API with `fetch`, then show the server's answer in place, so what the
page shows after a change is what the server now has.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

TOPICS = [
    ("scopez", "Logging Scopes"),
    ("memz", "Memory Usage"),
    ("envz", "Environment Variables"),
    ("procz", "Process Info"),
    ("argz", "Command-Line Arguments"),
    ("versionz", "Version Info"),
    ("metricz", "Metrics"),
]

_STYLE = """
body { font-family: sans-serif; margin: 0; color: #222; }
header { background: #466bb0; color: white; padding: 10px 20px; font-size: 20px; }
nav { float: left; width: 210px; padding: 10px 20px; }
nav a { display: block; padding: 4px 0; color: #466bb0; text-decoration: none; }
main { margin-left: 250px; padding: 10px 20px; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef; }
.status { margin-top: 10px; color: #466bb0; }
"""


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def layout(title: str, active: str, body: str, script: str = "") -> str:
    active_class = ' class="active"'
    menu = "".join(
        f'<a href="/{topic}/"{active_class if topic == active else ""}>{escape(name)}</a>'
        for topic, name in TOPICS
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>ControlZ: {escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header>meshpilot ControlZ</header><nav>{menu}</nav>"
        f"<main><h1>{escape(title)}</h1>{body}</main>"
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>"
    )


def home_page() -> str:
    items = "".join(f'<li><a href="/{t}/">{escape(n)}</a></li>' for t, n in TOPICS)
    return layout("ControlZ", "", f"<p>Introspection of this process.</p><ul>{items}</ul>")


def _rows(pairs: Iterable[tuple[str, Any]]) -> str:
    return "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>" for k, v in pairs)


def table_page(title: str, topic: str, data: Mapping[str, Any]) -> str:
    body = f'<table id="{topic}"><tr><th>Name</th><th>Value</th></tr>{_rows(data.items())}</table>'
    return layout(title, topic, body)


def list_page(title: str, topic: str, items: Iterable[str]) -> str:
    rows = "".join(f"<li>{escape(i)}</li>" for i in items)
    return layout(title, topic, f'<ol id="{topic}">{rows}</ol>')


_SCOPE_SCRIPT = """
document.querySelectorAll("select.level").forEach(function (select) {
  select.addEventListener("change", function () {
    var scope = select.dataset.scope;
    fetch("/scopej/" + scope, {method: "PUT", headers: {"Content-Type": "application/json"},
                                body: JSON.stringify({output_level: select.value})})
      .then(function (r) { return r.json(); })
      .then(function (info) {
        select.value = info.output_level;
        document.getElementById("status").textContent =
          "scope " + info.name + " is now at level " + info.output_level;
      });
  });
});
"""


def scopes_page(scopes: list[dict[str, Any]], levels: Iterable[str]) -> str:
    names = list(levels)
    rows = []
    for scope in scopes:
        options = "".join(
            f'<option value="{n}"{" selected" if n == scope["output_level"] else ""}>{n}</option>'
            for n in names
        )
        rows.append(
            f"<tr><td>{escape(scope['name'])}</td><td>{escape(scope['description'])}</td>"
            f'<td><select class="level" id="level-{escape(scope["name"])}" '
            f'data-scope="{escape(scope["name"])}">{options}</select></td></tr>'
        )
    body = (
        '<table id="scopes"><tr><th>Scope</th><th>Description</th><th>Output Level</th></tr>'
        + "".join(rows)
        + '</table><div id="status" class="status"></div>'
    )
    return layout("Logging Scopes", "scopez", body, _SCOPE_SCRIPT)


_MEMORY_SCRIPT = """
document.getElementById("collect").addEventListener("click", function () {
  fetch("/memj/forcecollection", {method: "PUT"})
    .then(function (r) { return r.json(); })
    .then(function (result) {
      document.getElementById("status").textContent =
        "collected " + result.collected + " objects; " + result.objects_after + " remain";
    });
});
"""


def memory_page(data: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in data.items() if k != "gc_generations"}
    generations = "".join(
        f"<tr><td>{i}</td><td>{g.get('collections')}</td><td>{g.get('collected')}</td>"
        f"<td>{g.get('uncollectable')}</td></tr>"
        for i, g in enumerate(data.get("gc_generations") or ())
    )
    body = (
        f'<table id="memz"><tr><th>Name</th><th>Value</th></tr>{_rows(shown.items())}</table>'
        "<h2>GC generations</h2><table><tr><th>Generation</th><th>Collections</th>"
        f"<th>Collected</th><th>Uncollectable</th></tr>{generations}</table>"
        '<p><button id="collect">Force garbage collection</button></p>'
        '<div id="status" class="status"></div>'
    )
    return layout("Memory Usage", "memz", body, _MEMORY_SCRIPT)


def metrics_page(families: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{escape(s['name'])}</td><td>{escape(_labels(s['labels']))}</td>"
        f"<td>{escape(str(s['value']))}</td></tr>"
        for family in families
        for s in family["samples"]
    )
    body = (
        f'<table id="metricz"><tr><th>Metric</th><th>Labels</th><th>Value</th></tr>{rows}</table>'
    )
    return layout("Metrics", "metricz", body)


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
