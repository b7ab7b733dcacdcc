"""Reading launch scripts: the words of the command that starts training, with the script's variables.

:func:`read_script` reads a shell script (or one command line) the way the shell would for the few
things a launch script does (comments, ``\\`` continuations, quotes, ``VAR=value``, ``export``, bash
arrays and ``"${arr[@]}"``, ``${var:-default}``, ``$((1 + 2))``, ``bash -c "..."``, ``srun``/``ray job
submit``/``accelerate launch`` wrappers, pipes such as ``| tee log``, redirections such as ``2>&1``,
commands after the launch line) and returns each launch command it recognises: verl
(``python3 -m verl.trainer.main_ppo key=value ...``), OpenRLHF (``python -m openrlhf.cli.train_ppo_ray``,
``deepspeed --module openrlhf.cli.train_ppo``) and TRL (``trl grpo --config ...``, ``accelerate launch
script.py --beta ...``).

Nothing is executed. What cannot be resolved without running something (``$(...)``, a variable that the
script does not set, ``$1``, ``$@``) stays in the word as an *unresolved* marker (:data:`MARK`); the
readers report a KL field whose value holds one, and :attr:`Script.notes` names every such construct.
Pure Python, no dependency (the in-browser page runs it under Pyodide).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["MARK", "Launch", "Script", "read_script", "unresolved", "show", "looks_like_script"]

MARK = "\x00"  # brackets an unresolved part of a word: MARK + "$NAME" + MARK

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\[[^\]]*\])?(\+?)=")
_REDIRECT = re.compile(r"(\d*|&)(>>|>&|>\||<<<|<<-|<<|<&|<>|>|<)")
_KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "time", "{", "nohup", "exec", "command"}
_ENDS = {"fi", "done", "esac", "}"}


def unresolved(value) -> bool:
    """Whether a value read from a script holds a part the inspector could not resolve."""
    return isinstance(value, str) and MARK in value


def show(value) -> str:
    """A value for a message: unresolved parts as they were written (``$NAME``)."""
    return str(value).replace(MARK, "")


@dataclass
class Launch:
    """One training command: ``kind`` is ``"verl"``, ``"openrlhf"`` or ``"trl"``; ``args`` follow ``entry``."""

    kind: str
    entry: str
    args: list[str]
    line: int


@dataclass
class Script:
    launches: list[Launch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    assumed: list[str] = field(default_factory=list)  # ${VAR:-default} taken at its default
    commands: list[list[str]] = field(default_factory=list)  # every simple command, words expanded

    unknowns: dict = field(default_factory=dict)  # kind -> constructs the inspector cannot resolve

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def unknown(self, kind: str, text: str) -> None:
        seen = self.unknowns.setdefault(kind, [])
        if text not in seen:
            seen.append(text)

    def summary(self) -> list[str]:
        """One note per kind of construct left unresolved (the rest of the script is still read)."""
        what = {
            "environment": "variables the script does not set (from the environment)",
            "output": "command output, not run",
            "arguments": "the script's own arguments (unknown)",
        }
        out = []
        for kind, items in self.unknowns.items():
            shown = ", ".join(f"`{x}`" for x in items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
            out.append(f"shell: not resolved: {what[kind]}: {shown}; the rest of the script is read")
        return out + self.notes


# --- scanning: text -> tokens ----------------------------------------------------------------------------
# A word is a list of parts: ("lit", text), ("var", name, index, op, arg), ("pos", text), ("unres", text).
# Operators: ";" (also newline), "&", "|", "&&", "||", "(", ")", ("redir", op).


class _Scanner:
    def __init__(self, text: str):
        # bash removes backslash-newline everywhere but inside single quotes; launch scripts rely on it
        self.s = re.sub(r"\\\r?\n", "", text.replace("\r\n", "\n"))
        self.i = 0
        self.line = 1
        self.heredocs: list[str] = []

    def peek(self, k=0):
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def tokens(self):
        out = []  # (kind, value, line)
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c == "\n":
                out.append(("op", ";", self.line))
                self.i += 1
                self.line += 1
                if self.heredocs:
                    for body, quoted in self._skip_heredocs():
                        parts = [("lit", body)] if quoted else _Scanner(body + '"')._dquoted()
                        out.insert(len(out) - 1, ("heredoc", parts, self.line))
                continue
            if c in " \t":
                self.i += 1
                continue
            if c == "#":
                while self.i < len(s) and s[self.i] != "\n":
                    self.i += 1
                continue
            m = _REDIRECT.match(s, self.i)
            if m and (m.group(1) == "" or m.group(1) == "&" or s[self.i : m.start(2)].isdigit()):
                op = m.group(2)
                if m.group(1) == "&" and op not in (">", ">>"):
                    m = None
            if m:
                op = m.group(2)
                self.i = m.end()
                if op in (">&", "<&"):  # 2>&1, >&2
                    while self.i < len(s) and (s[self.i].isdigit() or s[self.i] == "-"):
                        self.i += 1
                    out.append(("redir", op, self.line))
                    continue
                while self.i < len(s) and s[self.i] in " \t":
                    self.i += 1
                target = self._word()
                if op in ("<<", "<<-"):
                    quoted = any(p[0] != "lit" for p in target) or self.s[m.end() : m.end() + 1] in "'\""
                    self.heredocs.append(("".join(p[1] for p in target if p[0] == "lit"), quoted))
                out.append(("redir", op, self.line))
                continue
            if c in ";&|()":
                two = s[self.i : self.i + 2]
                if two in ("&&", "||", ";;"):
                    out.append(("op", two if two != ";;" else ";", self.line))
                    self.i += 2
                else:
                    out.append(("op", c, self.line))
                    self.i += 1
                continue
            line = self.line
            m = _ASSIGN.match(s, self.i)
            if m and self.peek(m.end() - self.i) == "(":  # NAME=( ... ) array literal
                self.i = m.end() + 1
                items = []
                while self.i < len(s) and s[self.i] != ")":
                    if s[self.i] in " \t\n":
                        if s[self.i] == "\n":
                            self.line += 1
                        self.i += 1
                    elif s[self.i] == "#":
                        while self.i < len(s) and s[self.i] != "\n":
                            self.i += 1
                    else:
                        items.append(self._word(stop=" \t\n)"))
                self.i += 1
                out.append(("array", (m.group(1), m.group(3) == "+", items), line))
                continue
            out.append(("word", self._word(), line))
        return out

    def _skip_heredocs(self):
        """The bodies of the here-documents started on the line just ended (the scanner moves past them)."""
        s, bodies, lines = self.s, [], []
        while self.heredocs and self.i < len(s):
            end = s.find("\n", self.i)
            end = len(s) if end < 0 else end
            line = s[self.i : end]
            self.i = end + 1
            self.line += 1
            if line.strip() == self.heredocs[0][0]:
                bodies.append(("\n".join(lines), self.heredocs.pop(0)[1]))
                lines = []
            else:
                lines.append(line)
        if self.heredocs:  # unterminated: the rest of the file
            bodies.append(("\n".join(lines), self.heredocs.pop(0)[1]))
            self.heredocs.clear()
        return bodies

    def _word(self, stop=" \t\n;&|()<>"):
        s = self.s
        parts = []
        lit = []

        def flush():
            if lit:
                parts.append(("lit", "".join(lit)))
                lit.clear()

        while self.i < len(s) and s[self.i] not in stop:
            c = s[self.i]
            if c == MARK:
                flush()
                parts.append(self._mark())
            elif c == "\\":
                lit.append(s[self.i + 1 : self.i + 2])
                self.i += 2
            elif c == "'":
                end = s.find("'", self.i + 1)
                end = len(s) if end < 0 else end
                lit.append(s[self.i + 1 : end])
                self.line += s.count("\n", self.i, end)
                self.i = end + 1
            elif c == '"':
                flush()
                self.i += 1
                parts.extend(self._dquoted())
            elif c == "$":
                flush()
                parts.append(self._dollar())
            elif c == "`":
                end = s.find("`", self.i + 1)
                end = len(s) if end < 0 else end
                parts.append(("unres", s[self.i : end + 1]))
                self.i = end + 1
            else:
                lit.append(c)
                self.i += 1
        flush()
        return parts

    def _dquoted(self):
        s = self.s
        parts, lit = [], []
        while self.i < len(s) and s[self.i] != '"':
            c = s[self.i]
            if c == MARK:
                if lit:
                    parts.append(("lit", "".join(lit)))
                    lit = []
                parts.append(self._mark())
            elif c == "\\" and self.peek(1) in '"\\$`':
                lit.append(self.peek(1))
                self.i += 2
            elif c == "$":
                if lit:
                    parts.append(("lit", "".join(lit)))
                    lit = []
                p = self._dollar()
                parts.append(p + ("q",) if p[0] == "var" else p)
            elif c == "`":
                end = s.find("`", self.i + 1)
                end = len(s) if end < 0 else end
                if lit:
                    parts.append(("lit", "".join(lit)))
                    lit = []
                parts.append(("unres", s[self.i : end + 1]))
                self.i = end + 1
            else:
                if c == "\n":
                    self.line += 1
                lit.append(c)
                self.i += 1
        self.i += 1
        if lit:
            parts.append(("lit", "".join(lit)))
        return parts or [("lit", "")]

    def _mark(self):
        """An unresolved part carried over from an outer script (``bash -c "$CMD"``)."""
        end = self.s.find(MARK, self.i + 1)
        end = len(self.s) if end < 0 else end
        text = self.s[self.i + 1 : end]
        self.i = end + 1
        return ("mark", text)

    def _match(self, open_, close, start):
        """Index just past the ``close`` matching ``open_`` at ``start`` (quotes skipped)."""
        s, depth, j = self.s, 0, start
        while j < len(s):
            c = s[j]
            if c in "'\"":
                end = s.find(c, j + 1)
                j = len(s) if end < 0 else end + 1
                continue
            if s.startswith(open_, j):
                depth += 1
                j += len(open_)
                continue
            if s.startswith(close, j):
                depth -= 1
                j += len(close)
                if depth == 0:
                    return j
                continue
            j += 1
        return len(s)

    def _dollar(self):
        s, i = self.s, self.i
        nxt = self.peek(1)
        if s.startswith("$((", i):
            end = self._match("((", "))", i + 1)
            self.i = end
            return ("arith", s[i + 3 : end - 2])
        if nxt == "(":
            end = self._match("(", ")", i + 1)
            self.i = end
            return ("unres", s[i:end])
        if nxt == "{":
            end = self._match("{", "}", i + 1)
            self.i = end
            body = s[i + 2 : end - 1]
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*|[0-9]+|[@*#?])(\[([^\]]*)\])?(?:(:?[-=+?])(.*))?", body, re.S)
            if not m:
                return ("unres", s[i:end])
            name, _, index, op, arg = m.groups()
            if not _NAME.fullmatch(name):
                return ("pos", s[i:end])
            return ("var", name, index, op, arg)
        m = _NAME.match(s, i + 1)
        if m:
            self.i = m.end()
            return ("var", m.group(0), None, None, None)
        if nxt and (nxt.isdigit() or nxt in "@*#?$!-"):
            self.i = i + 2
            return ("pos", s[i : i + 2])
        self.i = i + 1
        return ("lit", "$")


# --- evaluating: tokens -> commands with expanded words ----------------------------------------------------


class _Env:
    def __init__(self, script: Script):
        self.vars: dict[str, str | list[str]] = {}
        self.script = script

    def expand(self, parts, split_arrays=True) -> list[str]:
        """The words one scanned word becomes (several for ``"${arr[@]}"`` or an unquoted ``$ARGS``)."""
        words = [""]
        for p in parts:
            kind = p[0]
            if kind == "lit":
                words[-1] += p[1]
            elif kind == "mark":
                words[-1] += MARK + p[1] + MARK
            elif kind == "unres":
                self.script.unknown("output", p[1])
                words[-1] += MARK + p[1] + MARK
            elif kind == "pos":
                if p[1] in ("$@", "$*", "${@}", "${*}"):
                    self.script.unknown("arguments", p[1])
                    continue
                self.script.unknown("arguments", p[1])
                words[-1] += MARK + p[1] + MARK
            elif kind == "arith":
                words[-1] += self._arith(p[1])
            else:
                values = self._var(p)
                quoted = len(p) > 5
                if isinstance(values, list):
                    if split_arrays and len(values) != 1:
                        if not values:
                            continue
                        words[-1] += values[0]
                        words.extend(values[1:])
                    else:
                        words[-1] += " ".join(values)
                elif not quoted and split_arrays and MARK not in values and len(values.split()) > 1:
                    pieces = []
                    for ln in values.splitlines():
                        for w in ln.split():
                            if w.startswith("#"):  # bash would pass these on as words; a comment was meant
                                self.script.note(f"${p[1]} holds comment lines: they are not read as arguments")
                                break
                            pieces.append(w)
                    if pieces:
                        words[-1] += pieces[0]
                        words.extend(pieces[1:])
                else:
                    words[-1] += values
        if words == [""] and parts and all(p[0] == "pos" for p in parts):
            return []
        return words

    def _var(self, p):
        _, name, index, op, arg = p[:5]
        val = self.vars.get(name)
        if index is not None:
            if val is None:
                return MARK + f"${{{name}[{index}]}}" + MARK
            arr = val if isinstance(val, list) else [val]
            if index == "@":
                return list(arr)
            if index == "*":
                return " ".join(arr)
            if index.isdigit():
                return arr[int(index)] if int(index) < len(arr) else ""
            return MARK + f"${{{name}[{index}]}}" + MARK
        if isinstance(val, list):
            val = val[0] if val else ""
        if op is not None:
            if op in (":-", "-", ":=", "="):
                if val is None or (op.startswith(":") and val == ""):
                    default = " ".join(self.expand(_Scanner(arg or "")._word(stop=""), split_arrays=False))
                    if val is None:
                        self.script.assumed.append(f"{name}={default}")
                    if op.endswith("="):
                        self.vars[name] = default
                    return default
                return val
            if op in (":+", "+"):
                return " ".join(self.expand(_Scanner(arg or "")._word(stop=""), False)) if val else ""
            if val is None:
                return MARK + f"${{{name}}}" + MARK
            return val
        if val is None:
            self.script.unknown("environment", f"${name}")
            return MARK + f"${name}" + MARK
        return val

    def _arith(self, expr: str) -> str:
        text = re.sub(r"\$?\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: str(self.vars.get(m.group(1), "?")), expr)
        if re.fullmatch(r"[\d\s+\-*/%()]+", text):
            try:
                return str(int(eval(text.replace("/", "//"), {"__builtins__": {}}, {})))  # digits and operators only
            except Exception:
                pass
        return MARK + f"$(({expr}))" + MARK


def _commands(tokens):
    """Split the token stream into simple commands: lists of ("word"|"array", value, line)."""
    cmd = []
    for kind, value, line in tokens:
        if kind == "op":
            if cmd:
                yield cmd
            cmd = []
        elif kind == "redir":
            continue
        elif kind == "heredoc":
            cmd.append((kind, value, line))
        else:
            cmd.append((kind, value, line))
    if cmd:
        yield cmd


def _launch(argv: list[str], line: int) -> Launch | None:
    """The training command inside ``argv`` (after wrappers such as srun, torchrun, deepspeed, accelerate)."""
    for i, w in enumerate(argv):
        base = w.rsplit("/", 1)[-1]
        if re.fullmatch(r"(verl|recipe)(\.[\w]+)*\.main_\w+", w) or re.fullmatch(r"main_ppo\.py", base):
            return Launch("verl", w, argv[i + 1 :], line)
        if w.startswith("openrlhf.cli."):
            return Launch("openrlhf", w, argv[i + 1 :], line)
        if base == "trl" and i + 1 < len(argv) and argv[i + 1] in ("grpo", "rloo", "ppo", "online_dpo"):
            return Launch("trl", f"trl {argv[i + 1]}", argv[i + 2 :], line)
        if base.endswith(".py") and i > 0 and (argv[:i] and _python_like(argv[:i])):
            if re.search(r"grpo|rloo|ppo", base.replace(MARK, "")) or "open_r1" in w or unresolved(base):
                return Launch("trl", w, argv[i + 1 :], line)
        if w == "-m" and i + 1 < len(argv) and re.search(r"(^|\.)(grpo|rloo)\b", argv[i + 1]):
            if not argv[i + 1].startswith(("verl", "openrlhf")):
                return Launch("trl", argv[i + 1], argv[i + 2 :], line)
    return None


def _python_like(prefix: list[str]) -> bool:
    names = {p.rsplit("/", 1)[-1] for p in prefix}
    return bool(names & {"python", "python3", "accelerate", "torchrun", "deepspeed", "srun", "uv", "launch"}) or any(
        re.fullmatch(r"python3?(\.\d+)?", n) for n in names
    )


def _run(text: str, env: _Env, script: Script, depth: int, line0: int = 0) -> None:
    try:
        tokens = _Scanner(text).tokens()
    except RecursionError:  # pragma: no cover - absurdly nested input
        script.note("the script nests too deeply to read")
        return
    for cmd in _commands(tokens):
        line = cmd[0][2] + line0
        words = []
        assigns = []
        i = 0
        # leading assignments (NAME=value, arrays)
        while i < len(cmd):
            kind, value, _ = cmd[i]
            if kind == "array":
                assigns.append(("array", value))
                i += 1
                continue
            lit = value[0][1] if value and value[0][0] == "lit" else ""
            m = _ASSIGN.match(lit)
            if m and not words:
                rest = [("lit", lit[m.end() :])] + list(value[1:])
                assigns.append(("scalar", (m.group(1), m.group(3) == "+", rest)))
                i += 1
                continue
            break
        heredoc = None
        for kind, value, _ in cmd[i:]:
            if kind == "heredoc":
                heredoc = value
                continue
            if kind == "array":  # NAME=(...) after a command word (declare, local): assigned below
                continue
            words.extend(env.expand(value))
        while words and words[0] in _KEYWORDS:
            words = words[1:]
        if words and words[0] in _ENDS:
            words = words[1:]
        if not words or words[0] in ("export", "declare", "local", "readonly", "typeset"):
            exported = not words
            for kind, value in assigns:
                _assign(env, kind, value)
            if not exported:
                for kind, value, _ in cmd[i + 1 :]:
                    if kind == "array":
                        _assign(env, "array", value)
                        continue
                    lit = value[0][1] if value and value[0][0] == "lit" else ""
                    m = _ASSIGN.match(lit)
                    if m:
                        _assign(env, "scalar", (m.group(1), m.group(3) == "+", [("lit", lit[m.end() :])] + value[1:]))
            continue
        if words[0] == "read":
            names = [w for w in words[1:] if _NAME.fullmatch(w)]
            if names and heredoc is not None:
                env.vars[names[-1]] = "".join(env.expand(heredoc, split_arrays=False))
            elif names:
                env.vars[names[-1]] = MARK + "$" + names[-1] + MARK
            continue
        if words[0] == "unset":
            for w in words[1:]:
                env.vars.pop(w, None)
            continue
        if words[0] in ("source", "."):
            script.note(f"line {line}: `{' '.join(map(show, words[:2]))}` is not read")
            continue
        if words[0] == "for" and len(words) > 1 and _NAME.fullmatch(words[1]):
            env.vars[words[1]] = MARK + "$" + words[1] + MARK
            continue
        # bash -c "...", sh -c, eval "...": read the string as a script
        inner = None
        for j, w in enumerate(words):
            if w.rsplit("/", 1)[-1] in ("bash", "sh") and "-c" in words[j + 1 : j + 3]:
                k = words.index("-c", j + 1)
                if k + 1 < len(words):
                    inner = words[k + 1]
                break
            if w == "eval" and j == 0:
                inner = " ".join(words[1:])
                break
        if inner is not None and depth < 5:
            _run(inner, env, script, depth + 1, line - 1)
            continue
        script.commands.append(words)
        launch = _launch(words, line)
        if launch:
            script.launches.append(launch)


def _assign(env: _Env, kind: str, value) -> None:
    if kind == "array":
        name, append, items = value
        vals = [w for item in items for w in env.expand(item)]
        old = env.vars.get(name, [])
        old = old if isinstance(old, list) else [old]
        env.vars[name] = (old + vals) if append else vals
    else:
        name, append, parts = value
        val = "".join(env.expand(parts, split_arrays=False))
        old = env.vars.get(name, "")
        env.vars[name] = (old if isinstance(old, str) else " ".join(old)) + val if append else val


def read_script(text: str) -> Script:
    """Every training launch in a shell script or command line, variables resolved (see the module docstring).

    >>> s = read_script('K=0.1\\npython3 -m verl.trainer.main_ppo \\\\\\n  algorithm.kl_ctrl.kl_coef=$K $@ 2>&1 | tee log\\n')
    >>> s.launches[0].kind, s.launches[0].args
    ('verl', ['algorithm.kl_ctrl.kl_coef=0.1'])
    >>> s.unknowns
    {'arguments': ['$@']}
    """
    script = Script()
    _run(text, _Env(script), script, 0)
    return script


def looks_like_script(text: str) -> bool:
    """Whether ``text`` reads as a shell script or command line rather than YAML/JSON."""
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    if re.search(
        r"(^|[\s/=\"'])(verl\.trainer\.main_\w+|openrlhf\.cli\.\w+|accelerate\s+launch|trl\s+(grpo|rloo))", body
    ):
        return True
    if text.startswith("#!"):
        return True
    return bool(re.search(r"(^|\s)--[A-Za-z]", body)) and not re.search(r"^\s*[\w.+-]+\s*:(\s|$)", body, re.M)
