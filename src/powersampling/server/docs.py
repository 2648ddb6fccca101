"""``/docs``: the API reference as one self-contained HTML page rendered from the OpenAPI document.

FastAPI's Swagger UI and ReDoc pages load their scripts and styles from a public CDN: a browser opening them on a
private deployment reaches out to a third party, and runs whatever it serves next to the API key it may hold. This
page has no scripts and loads nothing (its Content-Security-Policy forbids it).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'"

_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}
code,pre{font-family:ui-monospace,monospace}pre{background:#f4f4f4;padding:.6rem;overflow-x:auto}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;
vertical-align:top}h2{margin-top:2rem;border-bottom:1px solid #ddd}"""


def install_docs(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi()), headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


def docs_page(openapi: dict[str, Any]) -> str:
    info = openapi.get("info", {})
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(info.get('title', ''))} API"
        f"</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info.get('title', ''))} {escape(str(info.get('version', '')))}</h1>",
        f"<p>{escape(info.get('description', ''))}</p>",
        '<p>The same as a machine-readable document: <a href="openapi.json"><code>/openapi.json</code></a>.</p>',
    ]
    for path, operations in openapi.get("paths", {}).items():
        for verb, op in operations.items():
            parts.append(f"<h2><code>{escape(verb.upper())} {escape(path)}</code></h2>")
            if op.get("description") or op.get("summary"):
                parts.append(f"<p>{escape(op.get('description') or op.get('summary'))}</p>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                parts.append(f"<p>Body (<code>application/json</code>): {_type(body)}</p>")
            parts.append("<table><tr><th>status</th><th>meaning</th></tr>")
            parts += [
                f"<tr><td>{escape(code)}</td><td>{escape(r.get('description', ''))}</td></tr>"
                for code, r in op.get("responses", {}).items()
            ]
            parts.append("</table>")
    schemas = openapi.get("components", {}).get("schemas", {})
    if schemas:
        parts.append("<h2>Schemas</h2>")
    for name, schema in schemas.items():
        parts.append(f'<h3 id="{escape(name)}">{escape(name)}</h3>')
        properties = schema.get("properties")
        if not properties:
            parts.append(f"<pre>{escape(json.dumps(schema, indent=2))}</pre>")
            continue
        required = set(schema.get("required", ()))
        parts.append("<table><tr><th>field</th><th>type</th><th>description</th></tr>")
        parts += [
            f"<tr><td><code>{escape(field)}</code>{' (required)' if field in required else ''}</td>"
            f"<td>{_type(spec)}</td><td>{escape(spec.get('description', ''))}</td></tr>"
            for field, spec in properties.items()
        ]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _type(schema: dict[str, Any]) -> str:
    """A short HTML rendering of a JSON schema's type: references link to their section, enums list their values."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#{escape(name)}">{escape(name)}</a>'
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_type(s) for s in schema[key])
    if "enum" in schema:
        return " | ".join(f"<code>{escape(json.dumps(v))}</code>" for v in schema["enum"])
    if "const" in schema:
        return f"<code>{escape(json.dumps(schema['const']))}</code>"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return escape(str(kind))
