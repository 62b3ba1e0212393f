"""docs/api.md keeps up with the code: its route table lists exactly the routes the server
serves, its error table exactly the ``error`` codes the server can answer, and its
``POST /api/me`` example has the shape (keys and value types) of a real answer.

Routes come from the OpenAPI document a real server answers (``GET /api/openapi.json``), which
is checked in turn against the Quart url_map, so a route registered outside the route specs
cannot slip past. Error codes are collected from the source with ``ast``: every ``code="..."``
keyword, every ``{"error": "..."}`` dict and ``_envelope(status, "...")`` call, the web layer's
``HTTP_CODES``, the per-block ``error`` of push and pull answers (``error="..."``,
``refused(status, "...")``), and the default code of every error class that is raised without
``code=``. A ``code=`` that is not a literal must be listed in ``DYNAMIC_CODES`` below, so a new
computed code cannot go unnoticed either.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import httpx
import pytest

from heaper_trio.app import RunningServer, create_app
from heaper_trio.client import HeaperClient
from heaper_trio.records import ChallengeProblem, RefreshOutcome
from heaper_trio.records.admin_links import AdminLinkProblem
from heaper_trio.web.errors import HTTP_CODES

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "heaper_trio"
API_MD = ROOT / "docs" / "api.md"

# ``code=<expression>`` that is not a string literal: (file, expression) -> the codes it gives.
DYNAMIC_CODES: dict[tuple[str, str], set[str]] = {
    ("services/accounts.py", "outcome.problem.value"): {p.value for p in ChallengeProblem},
    ("services/accounts.py", "result.outcome.value"): {
        o.value for o in RefreshOutcome if o is not RefreshOutcome.ok
    },
    # a token of an account that is not approved: pending or rejected
    ("services/accounts.py", "f'account_{user.state}'"): {"account_pending", "account_rejected"},
    ("services/admin_links.py", "outcome.problem.value"): {p.value for p in AdminLinkProblem},
    # b58decode_exact(..., kind): kind is "signature" or "public_key"
    ("keys.py", "f'invalid_{kind}'"): {"invalid_signature", "invalid_public_key"},
}


def _section(text: str, heading: str) -> list[str]:
    """The lines under ``heading`` up to the next heading of any level."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return lines[start:end]


def _table_rows(lines: list[str]) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return [
        r
        for r in rows
        if len(r) >= 2 and not set(r[0]) <= {"-"} and r[0] not in ("method", "status")
    ]


def _differences(
    name: str, documented: set[str], actual: set[str], where: str = "docs/api.md"
) -> str:
    missing = sorted(actual - documented)
    extra = sorted(documented - actual)
    return (
        f"{name} differs from the code.\n"
        f"  missing from {where} ({len(missing)}): {missing}\n"
        f"  in {where} but not in the code ({len(extra)}): {extra}"
    )


# -- routes -----------------------------------------------------------------------------------


def documented_routes() -> set[str]:
    """``METHOD /path/{param}`` for each route of the table (``WS`` rows: WebSocket routes)."""
    out: set[str] = set()
    for row in _table_rows(_section(API_MD.read_text(), "## Base URL and routes")):
        method = row[0]
        for path in re.findall(r"`([^`]+)`", row[1]):
            out.add(method + " " + re.sub(r":(\w+)", r"{\1}", path))
    return out


async def served_routes(http: httpx.AsyncClient) -> set[str]:
    r = await http.get("/api/openapi.json")
    assert r.status_code == 200
    out: set[str] = set()
    for path, ops in r.json()["paths"].items():
        for method, op in ops.items():
            out.add(f"{'WS' if op.get('x-websocket') else method.upper()} {path}")
    return out


def url_map_routes(server: RunningServer) -> set[str]:
    app = create_app(server.services)
    out: set[str] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        if rule.websocket:
            out.add(f"WS {path}")
            continue
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                out.add(f"{method} {path}")
    return out


@pytest.mark.engines("sqlite")
async def test_route_table_lists_every_route(
    server: RunningServer, http: httpx.AsyncClient, engine: str
) -> None:
    served = await served_routes(http)
    assert len(served) > 40
    quart = url_map_routes(server)
    assert quart <= served, _differences("the Quart url_map", served, quart, "the OpenAPI document")
    documented = documented_routes()
    assert documented == served, _differences("docs/api.md's route table", documented, served)


# -- error codes ------------------------------------------------------------------------------


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literals(node: ast.expr) -> set[str] | None:
    """The strings an expression made of literals can be (``"a" if x else "b"``), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        body, orelse = _literals(node.body), _literals(node.orelse)
        return None if body is None or orelse is None else body | orelse
    return None


def _error_classes(trees: dict[str, ast.Module]) -> dict[str, str]:
    """Every class deriving (directly or not) from HeaperError: name -> its default code."""
    found: dict[str, list[tuple[str | None, str | None]]] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            code: str | None = None
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign | ast.AnnAssign)
                    and _name(stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target)
                    == "code"
                    and stmt.value is not None
                    and (literals := _literals(stmt.value))
                ):
                    code = min(literals)
            bases = [b for b in map(_name, node.bases) if b]
            # two classes may share a name (web/ranges.py has its own RangeNotSatisfiable)
            found.setdefault(node.name, []).append((bases[0] if bases else None, code))

    def resolve(name: str, seen: frozenset[str] = frozenset()) -> str | None:
        """The default code of ``name`` if it is a HeaperError, else None."""
        for base, code in found.get(name, []):
            if name == "HeaperError":
                return code
            if base is None or base in seen:
                continue
            inherited = resolve(base, seen | {name})
            if inherited is not None:
                return code or inherited
        return None

    return {name: code for name in found if (code := resolve(name)) is not None}


def answerable_codes() -> tuple[set[str], list[str]]:
    """The codes the source can answer, and the ``code=`` expressions nobody explained."""
    trees = {
        str(p.relative_to(PACKAGE)): ast.parse(p.read_text(), str(p))
        for p in sorted(PACKAGE.rglob("*.py"))
        # the client package answers nothing: its own HeaperError wraps the server's answers
        if p.relative_to(PACKAGE).parts[0] != "client"
    }
    classes = _error_classes(trees)
    codes = set(HTTP_CODES.values())
    unexplained: list[str] = []
    for rel, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "error"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        codes.add(value.value)
            if not isinstance(node, ast.Call):
                continue
            func = _name(node.func)
            if func == "_envelope" and len(node.args) > 1:
                arg = node.args[1]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    codes.add(arg.value)
            keywords = {k.arg: k.value for k in node.keywords}
            # a push or pull answers some blocks with an ``error`` of their own (200 overall);
            # the live protocol's (services/live/) are docs/protocol.md's
            per_item = [node.args[1]] if func == "refused" and len(node.args) > 1 else []
            if "error" in keywords and not rel.startswith("services/live/"):
                per_item.append(keywords["error"])
            for value in per_item:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    codes.add(value.value)
            if "code" in keywords:
                value = keywords["code"]
                if (literals := _literals(value)) is not None:
                    codes |= literals
                elif isinstance(value, ast.Constant) and value.value is None:
                    if func in classes:  # code=None: the class's own
                        codes.add(classes[func])
                elif isinstance(value, ast.Name) and value.id == "code":
                    pass  # a constructor handing its own ``code`` parameter on
                else:
                    expr = ast.unparse(value)
                    if (rel, expr) in DYNAMIC_CODES:
                        codes |= DYNAMIC_CODES[(rel, expr)]
                    else:
                        unexplained.append(f"{rel}:{node.lineno}: code={expr}")
            elif func in classes and None not in keywords:  # no **kwargs that may carry one
                codes.add(classes[func])
    return codes, unexplained


def documented_codes() -> set[str]:
    codes: set[str] = set()
    for row in _table_rows(_section(API_MD.read_text(), "### Error codes")):
        if row[1] == "`http_<status>`":  # web/errors.py's fallback beyond HTTP_CODES
            continue
        m = re.fullmatch(r"`(\w+)`", row[1])
        assert m, f"docs/api.md's error table: the code cell should be one `code`: {row}"
        codes.add(m.group(1))
    return codes


def test_error_table_lists_every_code() -> None:
    codes, unexplained = answerable_codes()
    assert not unexplained, (
        "code= is not a string literal here; add what it can be to DYNAMIC_CODES in "
        f"tests/test_docs_tables.py: {unexplained}"
    )
    assert len(codes) > 50
    documented = documented_codes()
    assert documented == codes, _differences("docs/api.md's error table", documented, codes)


# -- the /api/me example ----------------------------------------------------------------------


def _shape(value: object) -> object:
    """The keys of a JSON value, recursively (lists by their first item); leaves by type."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


@pytest.mark.engines("sqlite")
async def test_me_example_has_the_shape_of_a_real_answer(admin: HeaperClient, engine: str) -> None:
    section = "\n".join(_section(API_MD.read_text(), "## `POST /api/me`"))
    example = re.search(r"```json\n(.*?)```", section, re.S)
    assert example, "docs/api.md: no JSON example under ## `POST /api/me`"
    documented = json.loads(example.group(1))
    answer = (await admin.post("/api/me")).json()
    # email is null for this account; the example shows it null too
    assert _shape(documented) == _shape(answer), (
        "docs/api.md's /api/me example has another shape than a real answer:\n"
        f"  docs:   {json.dumps(_shape(documented))}\n  server: {json.dumps(_shape(answer))}"
    )
