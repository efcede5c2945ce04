"""ACME-CL/Python program pairs from one tiny AST: builders (`num`, `var`, `binop`, ...) and
the two emitters, `emit_acl` and `emit_python`, whose outputs print the same lines."""

from __future__ import annotations

import json
import keyword

Expr = tuple
Stmt = tuple


def num(v: int) -> Expr:
    return ("num", v)


def var(name: str) -> Expr:
    return ("var", name)


def text(s: str) -> Expr:
    return ("str", s)


def binop(op: str, left: Expr, right: Expr) -> Expr:
    return ("bin", op, left, right)


def call(fn: str, *args: Expr) -> Expr:
    return ("call", fn, list(args))


def cmp(op: str, left: Expr, right: Expr) -> Expr:
    return ("cmp", op, left, right)


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "MOD": 2}
_PY_OP = {"+": "+", "-": "-", "*": "*", "/": "//", "MOD": "%"}
_PY_CMP = {"=": "==", "<>": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
_PY_RESERVED = frozenset(
    "sum max min len input print id type list str int range round abs next iter map filter "
    "all any open format hash object set dict zip pow divmod vars dir bin hex oct ord chr "
    "bool float bytes tuple exit quit main".split()
)


def py_name(name: str) -> str:
    """ACME-CL name → Python name: TOTAL-PAY → total_pay (suffixed if it shadows a builtin)."""
    snake = name.lower().replace("-", "_")
    if snake in _PY_RESERVED or keyword.iskeyword(snake):
        snake += "_"
    return snake


def _acl_expr(e: Expr, parent: int = 0, right: bool = False) -> str:
    kind = e[0]
    if kind == "num":
        return str(e[1]) if e[1] >= 0 else f"(-{-e[1]})"
    if kind == "var":
        return e[1]
    if kind == "str":
        return '"' + e[1].replace('"', '""') + '"'
    if kind == "call":
        return f"{e[1]}({', '.join(_acl_expr(a) for a in e[2])})"
    if kind == "bin":
        p = _PREC[e[1]]
        s = f"{_acl_expr(e[2], p)} {e[1]} {_acl_expr(e[3], p, True)}"
        return f"({s})" if p < parent or (p == parent and right) else s
    return _acl_cond(e)


def _acl_cond(c: Expr, parent: str = "") -> str:
    kind = c[0]
    if kind == "cmp":
        return f"{_acl_expr(c[2])} {c[1]} {_acl_expr(c[3])}"
    if kind == "not":
        return f"NOT {_acl_cond(c[1], 'NOT')}"
    op = kind.upper()
    s = f"{_acl_cond(c[1], op)} {op} {_acl_cond(c[2], op)}"
    return f"({s})" if parent and parent != op else s


def _py_expr(e: Expr, parent: int = 0, right: bool = False) -> str:
    kind = e[0]
    if kind == "num":
        return str(e[1]) if e[1] >= 0 else f"(-{-e[1]})"
    if kind == "var":
        return py_name(e[1])
    if kind == "str":
        return json.dumps(e[1])
    if kind == "call":
        fn, args = e[1], [_py_expr(a) for a in e[2]]
        if fn in ("UPPER", "LOWER"):
            return f"{_py_wrap(e[2][0], args[0])}.{fn.lower()}()"
        py_fn = {"LENGTH": "len", "TEXT": "str", "NUMBER": "int", "ABS": "abs"}.get(fn, fn.lower())
        return f"{py_fn}({', '.join(args)})"
    if kind == "bin":
        p = _PREC[e[1]]
        s = f"{_py_expr(e[2], p)} {_PY_OP[e[1]]} {_py_expr(e[3], p, True)}"
        return f"({s})" if p < parent or (p == parent and right) else s
    return _py_cond(e)


def _py_wrap(node: Expr, s: str) -> str:
    return f"({s})" if node[0] == "bin" else s


def _py_cond(c: Expr, parent: str = "") -> str:
    kind = c[0]
    if kind == "cmp":
        return f"{_py_expr(c[2])} {_PY_CMP[c[1]]} {_py_expr(c[3])}"
    if kind == "not":
        return f"not {_py_cond(c[1], 'not')}"
    s = f"{_py_cond(c[1], kind)} {kind} {_py_cond(c[2], kind)}"
    return f"({s})" if parent and parent != kind else s


def _py_fstring(parts: list[Expr]) -> str:
    if len(parts) == 1:
        return _py_expr(parts[0])
    out = []
    for p in parts:
        if p[0] == "str":
            out.append(p[1].replace("\\", "\\\\").replace("{", "{{").replace("}", "}}"))
            out[-1] = out[-1].replace('"', '\\"')
        else:
            out.append("{" + _py_expr(p) + "}")
    return 'f"' + "".join(out) + '"'


def emit_acl(stmts: list[Stmt], indent: int = 0) -> list[str]:
    """ACME-CL lines for a statement list (three-space indents, as in the 1980s listings)."""
    pad = "   " * indent
    lines: list[str] = []
    for s in stmts:
        kind = s[0]
        if kind == "comment":
            lines.append(f"{pad}*> {s[1]}")
        elif kind == "declare":
            _, name, vtype, init = s
            tail = f" VALUE {_acl_expr(init)}" if init is not None else ""
            lines.append(f"{pad}DECLARE {name} AS {vtype}{tail}.")
        elif kind == "accept":
            lines.append(f"{pad}ACCEPT {s[1]}.")
        elif kind == "set":
            lines.append(f"{pad}SET {s[1]} TO {_acl_expr(s[2])}.")
        elif kind == "add":
            lines.append(f"{pad}ADD {_acl_expr(s[1])} TO {s[2]}.")
        elif kind == "sub":
            lines.append(f"{pad}SUBTRACT {_acl_expr(s[1])} FROM {s[2]}.")
        elif kind == "mul":
            lines.append(f"{pad}MULTIPLY {s[1]} BY {_acl_expr(s[2])}.")
        elif kind == "div":
            lines.append(f"{pad}DIVIDE {s[1]} BY {_acl_expr(s[2])}.")
        elif kind == "display":
            lines.append(f"{pad}DISPLAY {' & '.join(_acl_expr(p, 1) for p in s[1])}.")
        elif kind == "if":
            lines.append(f"{pad}IF {_acl_cond(s[1])} THEN")
            lines += emit_acl(s[2], indent + 1)
            if s[3]:
                lines.append(f"{pad}ELSE")
                lines += emit_acl(s[3], indent + 1)
            lines.append(f"{pad}END-IF.")
        elif kind == "while":
            lines.append(f"{pad}WHILE {_acl_cond(s[1])} DO")
            lines += emit_acl(s[2], indent + 1)
            lines.append(f"{pad}END-WHILE.")
        elif kind == "repeat":
            _, name, start, stop, step, body = s
            tail = f" STEP {step}" if step is not None else ""
            lines.append(
                f"{pad}REPEAT {name} FROM {_acl_expr(start)} TO {_acl_expr(stop)}{tail} DO"
            )
            lines += emit_acl(body, indent + 1)
            lines.append(f"{pad}END-REPEAT.")
        elif kind == "times":
            lines.append(f"{pad}REPEAT {_acl_expr(s[1])} TIMES")
            lines += emit_acl(s[2], indent + 1)
            lines.append(f"{pad}END-REPEAT.")
        elif kind == "leave":
            lines.append(f"{pad}LEAVE.")
        else:
            raise ValueError(f"unknown statement {kind}")
    return lines


def emit_python(stmts: list[Stmt], indent: int = 1, types: dict | None = None) -> list[str]:
    """Idiomatic Python lines for the same statements (inside `def main()`)."""
    types = {} if types is None else types
    pad = "    " * indent
    lines: list[str] = []
    for i, s in enumerate(stmts):
        kind = s[0]
        if kind == "comment":
            lines.append(f"{pad}# {s[1]}")
        elif kind == "declare":
            _, name, vtype, init = s
            types[name] = vtype
            nxt = stmts[i + 1] if i + 1 < len(stmts) else None
            if init is None and nxt is not None and nxt[0] == "accept" and nxt[1] == name:
                continue  # `x = int(input())` declares and reads in one line
            default = num(0) if vtype == "NUMBER" else text("")
            lines.append(f"{pad}{py_name(name)} = {_py_expr(init if init else default)}")
        elif kind == "accept":
            read = "input()" if types.get(s[1]) == "TEXT" else "int(input())"
            lines.append(f"{pad}{py_name(s[1])} = {read}")
        elif kind == "set":
            lines.append(f"{pad}{py_name(s[1])} = {_py_expr(s[2])}")
        elif kind in ("add", "sub"):
            op = "+=" if kind == "add" else "-="
            lines.append(f"{pad}{py_name(s[2])} {op} {_py_expr(s[1])}")
        elif kind in ("mul", "div"):
            op = "*=" if kind == "mul" else "//="
            lines.append(f"{pad}{py_name(s[1])} {op} {_py_expr(s[2])}")
        elif kind == "display":
            lines.append(f"{pad}print({_py_fstring(s[1])})")
        elif kind == "if":
            lines += _py_if(s, pad, indent, types, "if")
        elif kind == "while":
            lines.append(f"{pad}while {_py_cond(s[1])}:")
            lines += emit_python(s[2], indent + 1, types)
        elif kind == "repeat":
            _, name, start, stop, step, body = s
            delta = 1 if step is None or step > 0 else -1
            end = num(stop[1] + delta) if stop[0] == "num" else binop("+", stop, num(1))
            if delta < 0 and stop[0] != "num":
                end = binop("-", stop, num(1))
            args = [_py_expr(start), _py_expr(end)]
            if step is not None:
                args.append(str(step))
            if start == num(0) and step is None:
                args = args[1:]
            lines.append(f"{pad}for {py_name(name)} in range({', '.join(args)}):")
            lines += emit_python(body, indent + 1, types)
        elif kind == "times":
            lines.append(f"{pad}for _ in range({_py_expr(s[1])}):")
            lines += emit_python(s[2], indent + 1, types)
        elif kind == "leave":
            lines.append(f"{pad}break")
        else:
            raise ValueError(f"unknown statement {kind}")
    return lines


def _py_if(s: Stmt, pad: str, indent: int, types: dict, word: str) -> list[str]:
    lines = [f"{pad}{word} {_py_cond(s[1])}:"]
    lines += emit_python(s[2], indent + 1, types)
    orelse = s[3]
    if len(orelse) == 1 and orelse[0][0] == "if":
        lines += _py_if(orelse[0], pad, indent, types, "elif")  # ACME-CL has no ELSE IF
    elif orelse:
        lines.append(f"{pad}else:")
        lines += emit_python(orelse, indent + 1, types)
    return lines
