"""SGLang's own request types and HTTP routes, read from the installed SGLang source.

SGLang's request module cannot be imported without its GPU stack (sglang.srt.utils pulls in tvm_ffi),
so this reads the source with `ast`: the fields of each request class (name, annotation, whether it has
a default), the routes of the HTTP server, the CLI flags of the server arguments, and it loads the
dependency-free weight-sync module (FlattenedTensorBucket) by file path. Install with
`pip install sglang==0.5.23 --no-deps` (no dependency is needed to read the source).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from functools import cache
from pathlib import Path

import pytest

from mmr1_mega.rollout.sglang_payloads import SGLANG_VERSION


@cache
def root() -> Path:
    spec = importlib.util.find_spec("sglang")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"sglang source not installed: pip install sglang=={SGLANG_VERSION} --no-deps")
    path = Path(next(iter(spec.submodule_search_locations)))
    from importlib.metadata import version

    if version("sglang") != SGLANG_VERSION:
        pytest.skip(f"sglang {version('sglang')} installed, the adapter is pinned to {SGLANG_VERSION}")
    return path


@cache
def _tree(relative: str) -> ast.Module:
    return ast.parse((root() / relative).read_text())


def classes(relative: str) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in _tree(relative).body if isinstance(n, ast.ClassDef)}


def fields(relative: str, class_name: str) -> dict[str, tuple[ast.expr, bool]]:
    """name -> (annotation node, has a default) for a dataclass / msgspec Struct, bases included."""
    cls = classes(relative)[class_name]
    out: dict = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes(relative):
            out.update(fields(relative, base.id))
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = (node.annotation, node.value is not None)
    return out


IO_STRUCT = "srt/managers/io_struct.py"
SAMPLING = "srt/sampling/sampling_params.py"


def check(value, annotation: ast.expr) -> bool:
    """Whether a JSON value fits a typing annotation as written in SGLang's source."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body
    if isinstance(annotation, ast.Name) or isinstance(annotation, ast.Attribute):
        name = annotation.id if isinstance(annotation, ast.Name) else annotation.attr
        simple = {"str": str, "int": int, "float": (int, float), "bool": bool, "bytes": (str, bytes)}
        if name == "Any":
            return True
        if name in simple:
            return isinstance(value, simple[name]) and not (
                name in ("int", "float") and isinstance(value, bool)
            )
        return True  # a named type alias (e.g. the multimodal item unions): accept
    if isinstance(annotation, ast.Constant) and annotation.value is None:
        return value is None
    if isinstance(annotation, ast.Subscript):
        head = annotation.value.id if isinstance(annotation.value, ast.Name) else annotation.value.attr
        args = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        if head == "Optional":
            return value is None or check(value, args[0])
        if head == "Union":
            return any(check(value, a) for a in args)
        if head in ("List", "list", "Set", "set"):
            return isinstance(value, list) and all(check(v, args[0]) for v in value)
        if head in ("Dict", "dict"):
            return isinstance(value, dict)
        if head == "Literal":
            return value in [a.value for a in args]
        if head == "Annotated":
            return check(value, args[0])
    return True


def validate(body: dict, class_name: str, relative: str = IO_STRUCT) -> list[str]:
    """Problems of a JSON body against an SGLang request class: unknown keys, missing required fields,
    values whose type does not fit the field's annotation. Empty when the body is valid."""
    spec = fields(relative, class_name)
    problems = [f"{class_name} has no field {k!r}" for k in body if k not in spec]
    problems += [
        f"{class_name}.{k} is required"
        for k, (_, has_default) in spec.items()
        if not has_default and k not in body
    ]
    problems += [
        f"{class_name}.{k}={body[k]!r:.80} does not fit {ast.unparse(spec[k][0])}"
        for k in body
        if k in spec and not check(body[k], spec[k][0])
    ]
    return problems


@cache
def routes() -> dict[str, set[str]]:
    """HTTP path -> methods of SGLang's server (app.get / app.post / app.api_route decorators)."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(_tree("srt/entrypoints/http_server.py")):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for d in node.decorator_list:
            if not (isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.args):
                continue
            if not isinstance(d.args[0], ast.Constant):
                continue
            kind = d.func.attr
            methods = {"get": {"GET"}, "post": {"POST"}}.get(kind)
            if kind == "api_route":
                kw = {k.arg: k.value for k in d.keywords}
                methods = {e.value for e in kw["methods"].elts} if "methods" in kw else {"GET"}
            if methods:
                out.setdefault(d.args[0].value, set()).update(methods)
    return out


@cache
def server_flags() -> set[str]:
    """CLI flags of `sglang.launch_server`: "--" + field name with dashes, for every server-args field."""
    flags = set()
    for f in (root() / "srt/arg_groups/fields").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                flags.add("--" + node.target.id.replace("_", "-"))
    return flags


@cache
def allowed_unpickle_globals() -> set[tuple[str, str]]:
    """SGLang's SafeUnpickler.ALLOWED_GLOBALS (what its weight payloads may reference)."""
    for node in ast.walk(_tree("srt/utils/common.py")):
        if isinstance(node, ast.ClassDef) and node.name == "SafeUnpickler":
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and stmt.targets[0].id == "ALLOWED_GLOBALS":
                    return {tuple(e.value for e in t.elts) for t in stmt.value.elts}
    raise AssertionError("SafeUnpickler.ALLOWED_GLOBALS not found in sglang/srt/utils/common.py")


def load_tensor_bucket_module():
    """sglang.srt.weight_sync.tensor_bucket loaded from its file (it imports only torch), registered
    under its real name so pickles reference it as SGLang's unpickler expects."""
    name = "sglang.srt.weight_sync.tensor_bucket"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, root() / "srt/weight_sync/tensor_bucket.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
