#!/usr/bin/env python3
"""Structure checks for the syncpool workspace (standard library only, no build).

Rules, over every .rs file under src/ and workers/src/ (src/main.rs excluded from the
import graph: it sees the library as `syncpool::...`):

  1. files:     no file longer than MAX_FILE_LINES lines;
  2. functions: no fn with a body longer than MAX_FN_LINES lines, counted from the line
                of `fn NAME` to the line of its closing brace; code gated by
                `#[cfg(test)]` (test modules) and macro_rules! bodies are skipped;
  3. modules:   no cycle among a crate's module imports, at three granularities:
                top-level modules (store, http, ...), second-level modules
                (store::sqlite, http::api, ...), and the direct children of each
                top-level module among themselves (http::api -> http::openapi ...).
                A -> B when code of A names a path into B (`crate::B..`,
                `super::B..`, `self::B..`, or a child module by its bare name, in use
                declarations and inline paths alike; comments, strings and
                #[cfg(test)] code aside).  Edges to the module itself or to one of
                its ancestors (child -> parent) are ignored;
  4. databases: code under src/worker/ and src/http/ never names a database (no
                identifier such as DbPool, Sqlite, PgPool, apalis_postgres; comments
                and strings aside): only the store and the queue know which one is in
                use.

An edge goes to the module a path names: `crate::http::ApiError` is an edge to http
even though http only re-exports it from http::error; `--follow-reexports` attributes
such items to the module that defines them (through `use`/`pub use`, globs included).

Exit status: 0 when every rule holds, 1 otherwise.  `--verbose` also lists every edge.
Usage: python3 scripts/structure.py [--verbose] [--follow-reexports]
"""

import argparse
import re
import os
import sys
from collections import defaultdict

MAX_FILE_LINES = 800
MAX_FN_LINES = 100

# (tree, crate name) pairs; paths are relative to the workspace root.
TREES = [("src", "syncpool"), ("workers/src", "syncpool_workers")]
EXCLUDED_FROM_GRAPH = {"src/main.rs"}


# --------------------------------------------------------------------------- lexer

class Tok:
    __slots__ = ("kind", "val", "line")

    def __init__(self, kind, val, line):
        self.kind = kind  # 'id' (identifiers and keywords), 'lt', 'p' (punct), 'lit'
        self.val = val
        self.line = line

    def __repr__(self):
        return f"{self.kind}:{self.val!r}@{self.line}"


class LexError(Exception):
    pass


def _is_id_start(c):
    return c == "_" or c.isalpha()


def _is_id_char(c):
    return c == "_" or c.isalnum()


def lex(text):
    """Tokens of Rust source, comments dropped, literals collapsed to one token."""
    toks = []
    i, n, line = 0, len(text), 1

    def skip_quoted(j, quote):
        """j is just past the opening quote; returns index just past the closing one."""
        nonlocal line
        while j < n:
            c = text[j]
            if c == "\\":
                if j + 1 < n and text[j + 1] == "\n":
                    line += 1
                j += 2
                continue
            if c == "\n":
                line += 1
            elif c == quote:
                return j + 1
            j += 1
        raise LexError(f"unterminated string literal (opened line {start_line})")

    def skip_raw(j):
        """j at the first '#' or '"' after the r / br / cr prefix."""
        nonlocal line
        hashes = 0
        while j < n and text[j] == "#":
            hashes += 1
            j += 1
        if j >= n or text[j] != '"':
            return None
        j += 1
        close = '"' + "#" * hashes
        k = text.find(close, j)
        if k < 0:
            raise LexError(f"unterminated raw string (opened line {start_line})")
        line += text.count("\n", j, k)
        return k + len(close)

    while i < n:
        c = text[i]
        start_line = line
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        # comments
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            k = text.find("\n", i)
            i = n if k < 0 else k
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth += 1
                    j += 2
                elif text.startswith("*/", j):
                    depth -= 1
                    j += 2
                else:
                    if text[j] == "\n":
                        line += 1
                    j += 1
            if depth:
                raise LexError(f"unterminated block comment (opened line {start_line})")
            i = j
            continue
        # raw strings / byte strings / C strings, raw identifiers
        if c in "rbc":
            j = i
            if text.startswith("br", i) or text.startswith("cr", i):
                j = i + 2
            elif c == "r":
                j = i + 1
            if j > i and j < n and text[j] in '#"':
                if text[j] == "#" and j + 1 < n and _is_id_start(text[j + 1]) and c == "r" and j == i + 1:
                    # raw identifier r#name
                    k = j + 1
                    while k < n and _is_id_char(text[k]):
                        k += 1
                    toks.append(Tok("id", text[j + 1:k], start_line))
                    i = k
                    continue
                end = skip_raw(j)
                if end is not None:
                    toks.append(Tok("lit", "str", start_line))
                    i = end
                    continue
            if c in "bc" and i + 1 < n and text[i + 1] == '"':
                i = skip_quoted(i + 2, '"')
                toks.append(Tok("lit", "str", start_line))
                continue
            if c == "b" and i + 1 < n and text[i + 1] == "'":
                i = skip_quoted(i + 2, "'")
                toks.append(Tok("lit", "char", start_line))
                continue
        if _is_id_start(c):
            j = i + 1
            while j < n and _is_id_char(text[j]):
                j += 1
            toks.append(Tok("id", text[i:j], start_line))
            i = j
            continue
        if c.isdigit():
            j = i + 1
            while j < n:
                d = text[j]
                if _is_id_char(d):
                    j += 1
                elif d == "." and j + 1 < n and text[j + 1].isdigit() and not toks_ends_with_dot(toks):
                    j += 1
                elif d in "+-" and text[j - 1] in "eE" and not text[i:j].lower().startswith("0x"):
                    j += 1
                else:
                    break
            toks.append(Tok("lit", "num", start_line))
            i = j
            continue
        if c == '"':
            i = skip_quoted(i + 1, '"')
            toks.append(Tok("lit", "str", start_line))
            continue
        if c == "'":
            # char literal: '\..' escape, or exactly one char followed by a quote;
            # otherwise a lifetime or label ('a, 'static, 'outer:).
            if i + 1 < n and text[i + 1] == "\\":
                i = skip_quoted(i + 1, "'")
                toks.append(Tok("lit", "char", start_line))
                continue
            if i + 2 < n and text[i + 2] == "'" and text[i + 1] != "\n":
                toks.append(Tok("lit", "char", start_line))
                i += 3
                continue
            j = i + 1
            while j < n and _is_id_char(text[j]):
                j += 1
            if j == i + 1:
                raise LexError(f"stray quote at line {line}")
            toks.append(Tok("lt", text[i:j], start_line))
            i = j
            continue
        if c == ":" and i + 1 < n and text[i + 1] == ":":
            toks.append(Tok("p", "::", start_line))
            i += 2
            continue
        toks.append(Tok("p", c, start_line))
        i += 1
    return toks


def toks_ends_with_dot(toks):
    # `t.0.1` is a tuple-field chain, not the float 0.1
    return bool(toks) and toks[-1].kind == "p" and toks[-1].val == "."


def match_brackets(toks):
    """Index of the matching bracket for every (, [, { and ), ], }."""
    match = {}
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for i, t in enumerate(toks):
        if t.kind != "p":
            continue
        if t.val in "([{":
            stack.append(i)
        elif t.val in ")]}":
            if not stack or toks[stack[-1]].val != pairs[t.val]:
                raise LexError(f"unbalanced {t.val!r} at line {t.line}")
            j = stack.pop()
            match[i] = j
            match[j] = i
    if stack:
        raise LexError(f"unclosed {toks[stack[-1]].val!r} at line {toks[stack[-1]].line}")
    return match


# --------------------------------------------------------------------------- file scan

def is_p(t, v):
    return t is not None and t.kind == "p" and t.val == v


def is_id(t, v=None):
    return t is not None and t.kind == "id" and (v is None or t.val == v)


class FileScan:
    """Functions, path references and module declarations of one file."""

    def __init__(self, rel, module):
        self.rel = rel
        self.module = module          # tuple of segments, () for the crate root
        self.fns = []                 # (name, start line, end line)
        self.refs = []                # (scope module, raw segments, line, in_use)
        self.inline_mods = set()      # module tuples declared inline (mod x { })
        self.test_mod_files = set()   # module tuples of `#[cfg(test)] mod x;`
        self.skipped_test = []        # (first line, last line) of cfg(test) items
        self.globs = defaultdict(list)  # scope -> raw segments of `use ...::*` (anywhere)
        # module-level names, for following re-exports (--follow-reexports):
        self.defined = defaultdict(set)   # scope -> names of items defined there
        self.bindings = defaultdict(dict)  # scope -> name -> raw segments of its `use`
        self.modglobs = defaultdict(list)  # scope -> raw segments of module-level globs
        self.file_test_only = False


def cfg_is_test(toks, lb, rb):
    """Does the attribute body toks[lb+1:rb] (inside #[ ]) read cfg(test) / cfg(all(test, ..))?"""
    body = toks[lb + 1:rb]
    if len(body) < 4 or not is_id(body[0], "cfg") or not is_p(body[1], "("):
        return False
    inner = [t.val for t in body[2:-1]]
    if inner == ["test"]:
        return True
    if inner[:2] == ["all", "("]:
        # test as a direct conjunct of all(...)
        depth = 0
        for k, v in enumerate(inner[2:-1]):
            if v in "([":
                depth += 1
            elif v in ")]":
                depth -= 1
            elif v == "test" and depth == 0:
                return True
    return False


def item_end(toks, match, k):
    """Given k at the first token of an item (after its attributes), the index of its
    last token: the `;` or the closing `}` of its body."""
    n = len(toks)
    # `use`, `const`, `static`, `type`, `extern crate`: end at `;` at depth 0
    j = k
    while j < n and (is_id(toks[j], "pub") or is_id(toks[j], "unsafe") or is_id(toks[j], "async")
                     or is_id(toks[j], "extern") or toks[j].kind == "lit"):
        if is_id(toks[j], "pub") and j + 1 < n and is_p(toks[j + 1], "("):
            j = match[j + 1] + 1
        else:
            j += 1
    semicolon_items = {"use", "const", "static", "type", "crate", "let"}
    braced_first = not (j < n and is_id(toks[j]) and toks[j].val in semicolon_items)
    if is_id(toks[j], "const") and j + 1 < n and is_id(toks[j + 1]) \
            and toks[j + 1].val in ("fn", "unsafe", "async", "extern"):
        braced_first = True  # const fn
    while j < n:
        t = toks[j]
        if t.kind == "p":
            if t.val == ";":
                return j
            if t.val == "{" and braced_first:
                return match[j]
            if t.val in "([{":
                j = match[j]
        j += 1
    return n - 1


def scan_file(rel, module, text):
    fs = FileScan(rel, module)
    toks = lex(text)
    match = match_brackets(toks)
    n = len(toks)

    # Ranges to skip: cfg(test) items (for everything) and macro_rules bodies (for fns).
    test_ranges = []     # (start idx, end idx)
    macro_ranges = []
    scopes = []          # (module tuple, end idx) for inline modules

    # file-level #![cfg(test)]
    i = 0
    while i + 2 < n and is_p(toks[i], "#") and is_p(toks[i + 1], "!") and is_p(toks[i + 2], "["):
        rb = match[i + 2]
        if cfg_is_test(toks, i + 2, rb):
            fs.file_test_only = True
        i = rb + 1

    # pass 1: test items, macro_rules, inline modules
    i = 0
    while i < n:
        t = toks[i]
        if is_p(t, "#") and i + 1 < n and is_p(toks[i + 1], "[") and cfg_is_test(toks, i + 1, match[i + 1]):
            # skip further attributes to the item itself
            k = match[i + 1] + 1
            while k + 1 < n and is_p(toks[k], "#") and is_p(toks[k + 1], "["):
                k = match[k + 1] + 1
            end = item_end(toks, match, k)
            # out-of-line test module: `#[cfg(test)] mod x;`
            kk = k
            if is_id(toks[kk], "pub"):
                kk += 1
                if is_p(toks[kk], "("):
                    kk = match[kk] + 1
            if is_id(toks[kk], "mod") and is_id(toks[kk + 1]) and is_p(toks[kk + 2], ";"):
                fs.test_mod_files.add(toks[kk + 1].val)
            test_ranges.append((i, end))
            fs.skipped_test.append((t.line, toks[end].line))
            i = end + 1
            continue
        if is_id(t, "macro_rules") and i + 3 < n and is_p(toks[i + 1], "!") and is_id(toks[i + 2]) \
                and toks[i + 3].kind == "p" and toks[i + 3].val in "([{":
            macro_ranges.append((i, match[i + 3]))
        i += 1

    def in_ranges(idx, ranges):
        for a, b in ranges:
            if a <= idx <= b:
                return True
        return False

    # innermost enclosing `{` of every token (-1 at file level)
    enclosing = [-1] * n
    open_stack = []
    for k, u in enumerate(toks):
        enclosing[k] = open_stack[-1] if open_stack else -1
        if is_p(u, "{"):
            open_stack.append(k)
        elif is_p(u, "}"):
            open_stack.pop()

    item_kw = {"fn", "struct", "enum", "trait", "type", "const", "static", "union", "mod"}

    # pass 2: functions, inline modules, references
    i = 0
    scope_stack = []  # (module tuple, end idx, index of its `{`)
    while i < n:
        while scope_stack and i > scope_stack[-1][1]:
            scope_stack.pop()
        cur = scope_stack[-1][0] if scope_stack else module
        at_module_level = enclosing[i] == (scope_stack[-1][2] if scope_stack else -1)
        t = toks[i]
        if in_ranges(i, test_ranges):
            # jump past the test range
            for a, b in test_ranges:
                if a <= i <= b:
                    i = b + 1
                    break
            continue
        if t.kind == "id":
            nxt = toks[i + 1] if i + 1 < n else None
            prev = toks[i - 1] if i > 0 else None
            if at_module_level and t.val in item_kw and not in_ranges(i, macro_ranges):
                k = i + 1
                if t.val == "static" and is_id(toks[k], "mut"):
                    k += 1
                if is_id(toks[k]) and toks[k].val != "fn":
                    fs.defined[cur].add(toks[k].val)
            # inline module
            if t.val == "mod" and is_id(nxt) and i + 2 < n and is_p(toks[i + 2], "{"):
                m = cur + (nxt.val,)
                fs.inline_mods.add(m)
                scope_stack.append((m, match[i + 2], i + 2))
                i += 3
                continue
            # function item
            if t.val == "fn" and is_id(nxt) and i + 2 < n and toks[i + 2].kind == "p" \
                    and toks[i + 2].val in "<(" and not in_ranges(i, macro_ranges):
                j = i + 2
                body = None
                while j < n:
                    u = toks[j]
                    if u.kind == "p":
                        if u.val == "{":
                            body = j
                            break
                        if u.val == ";":
                            break
                        if u.val in "([":
                            j = match[j]
                    j += 1
                if body is not None:
                    fs.fns.append((nxt.val, t.line, toks[match[body]].line))
                i += 2
                continue
            # use declaration (not `use<'a>` precise capturing)
            if t.val == "use" and not is_p(nxt, "<"):
                end = i + 1
                while end < n and not is_p(toks[end], ";"):
                    if toks[end].kind == "p" and toks[end].val in "([{":
                        end = match[end]
                    end += 1
                for segs, line, alias in parse_use_tree(toks, i + 1, end):
                    if segs and segs[-1] == "*":
                        fs.globs[cur].append(segs[:-1])
                        if at_module_level:
                            fs.modglobs[cur].append(segs[:-1])
                    elif at_module_level and alias != "_":
                        fs.bindings[cur][alias or segs[-1]] = segs
                    fs.refs.append((cur, segs, line, True))
                i = end + 1
                continue
            # start of a path: `crate::`, `$crate::`, `super::`, `self::`, `name::`
            if is_p(nxt, "::") and not is_p(prev, "::") and not is_p(prev, "."):
                # `pub(in crate::x)` is a visibility, not a reference
                if is_id(prev, "in") and i >= 3 and is_p(toks[i - 2], "(") and is_id(toks[i - 3], "pub"):
                    i += 1
                    continue
                segs = [t.val]
                j = i + 1
                while j + 1 < n and is_p(toks[j], "::") and is_id(toks[j + 1]):
                    segs.append(toks[j + 1].val)
                    j += 2
                fs.refs.append((cur, segs, t.line, False))
                i = j
                continue
        i += 1
    return fs


def parse_use_tree(toks, a, b):
    """Leaf paths of the use tree toks[a:b] (b is the `;`): list of (segments, line,
    alias or None).  `x::{self, y}` gives [x] and [x, y]; globs end in '*'."""
    out = []

    def tree(i, end, prefix):
        # returns nothing; walks one tree in toks[i:end]
        segs = list(prefix)
        line = toks[i].line if i < end else (toks[end - 1].line if end > 0 else 0)
        if i < end and is_p(toks[i], "::"):
            i += 1
        while i < end:
            t = toks[i]
            if t.kind == "id" or (is_p(t, "$") and i + 1 < end and is_id(toks[i + 1], "crate")):
                if is_p(t, "$"):
                    i += 1
                    t = toks[i]
                alias = None
                if i + 2 < end and is_id(toks[i + 1], "as") and toks[i + 2].kind in ("id", "p"):
                    alias = toks[i + 2].val
                if t.val == "self" and segs and (i + 1 >= end or not is_p(toks[i + 1], "::")):
                    out.append((segs, t.line, alias))
                    return
                segs.append(t.val)
                line = t.line
                i += 1
                if i < end and is_p(toks[i], "::"):
                    i += 1
                    continue
                # `as name` or end of tree
                out.append((segs, line, alias))
                return
            if is_p(t, "*"):
                out.append((segs + ["*"], t.line, None))
                return
            if is_p(t, "{"):
                close = find_close(toks, i, end)
                # split on top-level commas
                k = i + 1
                start = k
                depth = 0
                while k <= close:
                    u = toks[k]
                    if k == close or (is_p(u, ",") and depth == 0):
                        if start < k:
                            tree(start, k, segs)
                        start = k + 1
                    elif is_p(u, "{"):
                        depth += 1
                    elif is_p(u, "}"):
                        depth -= 1
                    k += 1
                return
            i += 1

    tree(a, b, [])
    return out


def find_close(toks, i, end):
    depth = 0
    for k in range(i, end):
        if is_p(toks[k], "{"):
            depth += 1
        elif is_p(toks[k], "}"):
            depth -= 1
            if depth == 0:
                return k
    return end - 1


# --------------------------------------------------------------------------- modules

def file_module(tree, path):
    """Module tuple of a file under `tree` (path relative to tree)."""
    parts = path[:-3].split("/")  # drop .rs
    if parts == ["lib"] or parts == ["main"]:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def fmt_mod(m):
    return "::".join(m) if m else "crate"


def resolve_path(segs, scope, modules, globs):
    """(module, rest) for a reference path: the deepest known module the path enters
    and the segments after it; None for external paths (std, other crates)."""
    first = segs[0]
    if first == "crate":
        base, rest = (), segs[1:]
    elif first == "self":
        base, rest = scope, segs[1:]
    elif first == "super":
        base = scope
        k = 0
        while k < len(segs) and segs[k] == "super":
            base = base[:-1]
            k += 1
        rest = segs[k:]
    elif scope + (first,) in modules:
        base, rest = scope, segs
    else:
        # a child module brought in by a glob import (`use super::*;` etc.)
        for g in globs.get(scope, []):
            r = resolve_path(g, scope, modules, {}) if g else None
            if r is not None and not r[1] and r[0] + (first,) in modules:
                base, rest = r[0], segs
                break
        else:
            return None
    full = base + tuple(s for s in rest if s != "*")
    # longest prefix that is a module
    for k in range(len(full), -1, -1):
        if full[:k] in modules:
            return full[:k], full[k:]
    return (), full


class Resolver:
    """Resolves references to modules, optionally following `use` re-exports to the
    module that defines the item (`crate::http::ApiError` -> http::error)."""

    def __init__(self, modules, scans, follow):
        self.modules = modules
        self.follow = follow
        self.defined = defaultdict(set)
        self.bindings = defaultdict(dict)
        self.modglobs = defaultdict(list)
        for fs in scans:
            for m, names in fs.defined.items():
                self.defined[m] |= names
            for m, b in fs.bindings.items():
                self.bindings[m].update(b)
            for m, g in fs.modglobs.items():
                self.modglobs[m].extend(g)

    def lookup(self, mod, name, seen):
        """Module defining `name` as seen from inside `mod`, or None if unknown/external."""
        if (mod, name) in seen:
            return None
        seen.add((mod, name))
        if name in self.defined[mod]:
            return mod
        if name in self.bindings[mod]:
            r = resolve_path(self.bindings[mod][name], mod, self.modules, {})
            if r is None:
                return None
            m, rest = r
            if not rest:
                return m
            return self.lookup(m, rest[0], seen) or m
        for g in self.modglobs[mod]:
            r = resolve_path(g, mod, self.modules, {}) if g else None
            if r is None or r[1] or r[0] == mod:
                continue
            found = self.lookup(r[0], name, seen)
            if found is not None:
                return found
        return None

    def target(self, segs, scope, globs):
        """(module, via): the module a path refers into, and the re-exporting module it
        was followed through (or None); None for external paths."""
        r = resolve_path(segs, scope, self.modules, globs)
        if r is None:
            return None
        mod, rest = r
        if self.follow and rest:
            found = self.lookup(mod, rest[0], set())
            if found is not None and found != mod:
                return found, mod
        return mod, None


# --------------------------------------------------------------------------- Tarjan

def tarjan(nodes, adj):
    index = {}
    low = {}
    on = set()
    stack = []
    out = []
    counter = [0]

    def strong(v):
        # iterative Tarjan
        work = [(v, iter(sorted(adj.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(adj.get(w, ())))))
                    advanced = True
                    break
                elif w in on:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


def shortest_cycle_through(comp, adj, start):
    """A shortest cycle inside comp through start (BFS), as a node list."""
    comp = set(comp)
    prev = {start: None}
    queue = [start]
    for v in queue:
        for w in sorted(adj.get(v, ())):
            if w not in comp:
                continue
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return None


# --------------------------------------------------------------------------- main

def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


# Rule 4: the folders that must not know which database is in use, and what naming one
# looks like (an identifier, so "postgres" in a string or a comment is fine).
DB_BLIND = ("src/worker/", "src/http/")
DB_WORD = re.compile(r"(?i)sqlite|postgres|^pg|DbPool|mysql")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="workspace root (default: the parent of scripts/)")
    ap.add_argument("--verbose", "-v", action="store_true",
                    help="also list every module edge (second level)")
    ap.add_argument("--follow-reexports", action="store_true",
                    help="attribute `T::Item` to the module that defines Item when T only "
                         "re-exports it (`pub use`, or a private `use` seen by children)")
    args = ap.parse_args()
    root = args.root

    long_files, long_fns, errors, db_names = [], [], [], []
    cycle_lines, edge_lines, cycle_counts = [], [], []
    n_files = n_fns = n_test_items = 0

    for tree, crate in TREES:
        base = os.path.join(root, tree)
        files = []
        for dp, dn, fn in os.walk(base):
            dn.sort()
            for f in sorted(fn):
                if f.endswith(".rs"):
                    files.append(os.path.relpath(os.path.join(dp, f), base).replace(os.sep, "/"))
        scans = {}
        modules = set()
        for f in files:
            rel = f"{tree}/{f}"
            with open(os.path.join(base, f), encoding="utf-8") as fh:
                text = fh.read()
            n_files += 1
            nlines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
            if nlines > MAX_FILE_LINES:
                long_files.append((rel, nlines))
            m = file_module(tree, f)
            if rel.startswith(DB_BLIND):
                try:
                    toks = lex(text)
                    # `InstanceKind::Postgres` is a kind of instance, not our database.
                    db_names.extend((rel, t.line, t.val) for i, t in enumerate(toks)
                                    if t.kind == "id" and DB_WORD.search(t.val)
                                    and not (i >= 2 and toks[i - 2].val == "InstanceKind"))
                except LexError:
                    pass  # reported by scan_file below
            try:
                fs = scan_file(rel, m, text)
            except LexError as e:
                errors.append(f"{rel}: cannot scan: {e}")
                continue
            scans[rel] = fs
            if fs.file_test_only:
                n_test_items += 1
                continue
            n_test_items += len(fs.skipped_test)
            for name, a, b in fs.fns:
                n_fns += 1
                if b - a + 1 > MAX_FN_LINES:
                    long_fns.append((rel, a, name, b - a + 1))
            if rel not in EXCLUDED_FROM_GRAPH:
                modules.add(m)
                modules.update(fs.inline_mods)

        # out-of-line test modules (`#[cfg(test)] mod x;`) and their files stay out
        test_files = set()
        for rel, fs in scans.items():
            for name in fs.test_mod_files:
                tm = fs.module + (name,)
                for r2, fs2 in scans.items():
                    if fs2.module[:len(tm)] == tm:
                        test_files.add(r2)
        for r2 in test_files:
            modules.discard(scans[r2].module)
        # the ancestors of every module exist (e.g. a/b.rs with a.rs)
        for m in list(modules):
            for k in range(len(m)):
                modules.add(m[:k])

        graph_scans = {rel: fs for rel, fs in scans.items()
                       if rel not in EXCLUDED_FROM_GRAPH and rel not in test_files
                       and not fs.file_test_only}
        resolver = Resolver(modules, graph_scans.values(), args.follow_reexports)

        # raw edges: (source module, target module) -> [(file, line, via)]
        raw = defaultdict(list)
        for rel, fs in sorted(graph_scans.items()):
            for scope, segs, line, _in_use in fs.refs:
                r = resolver.target(segs, scope, fs.globs)
                if r is None:
                    continue
                raw[(scope, r[0])].append((rel, line, r[1]))

        def graph(level, within=None):
            """Edges with modules truncated to `level` segments; `within` keeps only the
            edges between direct children of that top-level module."""
            g = defaultdict(lambda: defaultdict(list))
            for (src, tgt), where in raw.items():
                s2, t2 = src[:level], tgt[:level]
                if s2 == t2 or t2 == s2[:len(t2)]:
                    continue  # self edge, or child -> ancestor
                if within is not None and not (len(s2) == 2 and len(t2) == 2
                                               and s2[0] == within and t2[0] == within):
                    continue
                # a re-export is worth naming only when it hides the target at this level
                g[s2][t2].extend((f, l, via if via is not None and via[:level] != t2 else None)
                                 for f, l, via in where)
            return g

        def sccs_of(g):
            adj = {src: set(ts) for src, ts in g.items()}
            nodes = set(adj) | {t for ts in adj.values() for t in ts}
            return adj, sorted(sorted(c) for c in tarjan(nodes, adj) if len(c) > 1)

        def describe(g, adj, comp, title, same_as=None):
            names = ", ".join(fmt_mod(c) for c in comp)
            if same_as:
                return [f"    {title} cycle: {names}  (same edges as the {same_as} cycle above)"]
            lines = [f"    {title} cycle: {names}"]
            cyc = shortest_cycle_through(comp, adj, comp[0])
            if cyc:
                lines.append(f"      e.g. {' -> '.join(fmt_mod(c) for c in cyc)}")
            cs = set(comp)
            rows = []
            for src in comp:
                for tgt in sorted(adj.get(src, ())):
                    if tgt in cs:
                        where = sorted(set(g[src][tgt]), key=lambda w: (w[0], w[1]))
                        f0, l0, via = where[0]
                        ex = f"{f0}:{l0}" + (f" (via {fmt_mod(via)})" if via else "")
                        if len(where) > 1:
                            ex += f"  +{len(where) - 1} more"
                        rows.append((f"{fmt_mod(src)} -> {fmt_mod(tgt)}", ex))
            w = max(len(r[0]) for r in rows)
            lines.extend(f"      {a.ljust(w)}   {b}" for a, b in rows)
            return lines

        g1, g2 = graph(1), graph(2)
        adj1, s1 = sccs_of(g1)
        adj2, s2 = sccs_of(g2)
        e1 = sum(len(v) for v in adj1.values())
        e2 = sum(len(v) for v in adj2.values())
        lines = []
        for comp in s1:
            lines += describe(g1, adj1, comp, "top-level")
        top_edges = {(a, b) for a in adj1 for b in adj1[a]}
        for comp in s2:
            cs = set(comp)
            sub = {(a, b) for a in comp for b in adj2.get(a, ()) if b in cs}
            same = all(len(c) == 1 for c in comp) and sub <= top_edges and any(
                set(c1) == cs for c1 in s1)
            lines += describe(g2, adj2, comp, "second-level", "top-level" if same else None)
        sw = 0
        for top in sorted({m[0] for m in modules if m}):
            gw = graph(2, within=top)
            adjw, sws = sccs_of(gw)
            sw += len(sws)
            for comp in sws:
                cs = set(comp)
                subw = {(a, b) for a in comp for b in adjw.get(a, ()) if b in cs}
                same = any(set(c2) == cs and subw == {(a, b) for a in c2 for b in adj2.get(a, ())
                                                      if b in cs} for c2 in s2)
                lines += describe(gw, adjw, comp, f"within {top}", "second-level" if same else None)
        cycle_counts.append((crate, len(s1), len(s2), sw))
        cycle_lines.append(f"  {crate} ({tree}/): {plural(len(modules), 'module')}, "
                           f"{e1} top-level / {e2} second-level edges; "
                           f"cycles: {len(s1)} top-level, {len(s2)} second-level, "
                           f"{sw} within a top-level module")
        cycle_lines.extend(lines)
        if args.verbose:
            edge_lines.append(f"{crate} module edges (second level):")
            for src in sorted(g2):
                for tgt in sorted(g2[src]):
                    where = sorted(set(g2[src][tgt]), key=lambda w: (w[0], w[1]))
                    f0, l0, via = where[0]
                    edge_lines.append(f"  {fmt_mod(src)} -> {fmt_mod(tgt)}   {f0}:{l0}"
                                      + (f" (via {fmt_mod(via)})" if via else "")
                                      + (f"  +{len(where) - 1} more" if len(where) > 1 else ""))

    n_cycles = sum(a + b + c for _, a, b, c in cycle_counts)
    out = [f"[1] files over {MAX_FILE_LINES} lines: {len(long_files)}"]
    for rel, nl in sorted(long_files, key=lambda x: -x[1]):
        out.append(f"    {rel}: {nl} lines")
    out.append(f"[2] functions over {MAX_FN_LINES} lines: {len(long_fns)} "
               f"({n_fns} fns checked; {plural(n_test_items, '#[cfg(test)] item')} skipped)")
    for rel, line, name, nl in sorted(long_fns, key=lambda x: (-x[3], x[0], x[1])):
        out.append(f"    {rel}:{line} fn {name}: {nl} lines")
    out.append(f"[3] module import cycles: {n_cycles}"
               + (" (following re-exports)" if args.follow_reexports else ""))
    out.extend(cycle_lines)
    out.append(f"[4] database names in {' and '.join(DB_BLIND)}: {len(db_names)}")
    for rel, line, name in db_names:
        out.append(f"    {rel}:{line} {name}")
    if errors:
        out.append("scan errors (file skipped, rules 2-3 unchecked for it):")
        out.extend("    " + e for e in errors)
    if edge_lines:
        out.append("")
        out.extend(edge_lines)
    ok = not (long_files or long_fns or n_cycles or errors or db_names)
    cyc = "; ".join(f"{c} {a}/{b}/{w}" for c, a, b, w in cycle_counts)
    out.append(f"structure: {'OK' if ok else 'FAILED'} -- {n_files} files; "
               f"{plural(len(long_files), 'long file')}, {plural(len(long_fns), 'long fn')}, "
               f"cycles top/second/within: {cyc}"
               + (f"; {plural(len(errors), 'scan error')}" if errors else ""))
    print("\n".join(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
