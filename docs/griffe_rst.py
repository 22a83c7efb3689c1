"""Griffe extension for the docs build: renders the reST markup of dirloss docstrings.

The docstrings follow torch's conventions (``.. math::`` blocks, ``:math:`` and ``:func:``
roles, ``Example:`` sections) so that they read well in ``help()`` and run as doctests. This
rewrites a copy of each docstring, at docs-build time only, into what mkdocstrings renders:

* ``.. math::`` blocks become ``$$ ... $$`` and ``:math:`x``` becomes ``$x$`` (MathJax via
  ``pymdownx.arithmatex``);
* ``:func:`` / ``:class:`` / ``:data:`` / ``:meth:`` / ``:mod:`` / ``:attr:`` roles become
  links when they name a public dirloss object, code spans otherwise;
* ``Example:`` becomes ``Examples:``, so the doctest renders as code (griffe reads the
  singular as an admonition);
* an ``Args:`` / ``Attributes:`` entry for several names (``scale, step: ...``) becomes one
  entry per name with the shared description, so each gets its type and default;
* a ``#:`` comment above a module attribute becomes its docstring.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|data|meth|mod|attr|obj):`(~?)([\w.]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_BLOCK = re.compile(r"^(\s*)\.\. math::\s*$")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$")
_ITEM_SECTION = re.compile(r"^(\s*)(?:Args|Arguments|Parameters|Attributes):\s*$")
_SHARED_ITEM = re.compile(r"^(\s*)(\w+(?:\s*,\s*\w+)+)\s*:\s(.*)$")


class RstToMarkdown(griffe.Extension):
    """Rewrite dirloss docstrings for mkdocstrings (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path == "dirloss":
            self._walk(pkg, pkg)

    on_package_loaded = on_package  # the hook's name before griffe 1.14 (the rewrite is idempotent)

    def _walk(self, obj: griffe.Object, pkg: griffe.Module) -> None:
        if obj.is_attribute and obj.docstring is None:
            _docstring_from_comment(obj)
        if obj.docstring is not None:
            obj.docstring.value = _convert(obj.docstring.value, obj, pkg)
        for member in obj.members.values():
            if isinstance(member, griffe.Object):  # aliases are walked where they are defined
                self._walk(member, pkg)


def _docstring_from_comment(attr: griffe.Object) -> None:
    """Sphinx's ``#:`` comment lines right above an attribute, as its docstring."""
    path = attr.filepath
    if not attr.lineno or not isinstance(path, Path) or path not in attr.lines_collection:
        return
    lines = attr.lines_collection[path]
    comment: list[str] = []
    index = attr.lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        comment.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    if comment:
        attr.docstring = griffe.Docstring(
            "\n".join(comment), lineno=index + 2, endlineno=attr.lineno - 1, parent=attr
        )


def _convert(text: str, obj: griffe.Object, pkg: griffe.Module) -> str:
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        block = _MATH_BLOCK.match(lines[i])
        if block:
            indent = block.group(1)
            body = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            strip = min(len(b) - len(b.lstrip()) for b in body if b.strip()) if body else 0
            out += ["", indent + "$$", *(indent + b[strip:] for b in body), indent + "$$", ""]
            continue
        out.append(_EXAMPLE.sub(r"\1Examples:", lines[i]))
        i += 1
    text = "\n".join(_split_shared_items(out))
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", text)
    return _ROLE.sub(lambda m: _link(m.group(1) == "~", m.group(2), obj, pkg), text)


def _split_shared_items(lines: list[str]) -> list[str]:
    """``a, b: text`` in an Args/Attributes section -> ``a: text`` and ``b: text``."""
    out: list[str] = []
    section_indent = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None
        header = _ITEM_SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
        shared = _SHARED_ITEM.match(line) if section_indent is not None else None
        if shared is None:
            out.append(line)
            i += 1
            continue
        item = [shared.group(3)]
        i += 1
        while i < len(lines) and lines[i].strip() and (
            len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            item.append(lines[i])
            i += 1
        for name in re.split(r"\s*,\s*", shared.group(2)):
            out.append(f"{shared.group(1)}{name}: {item[0]}")
            out.extend(item[1:])
    return out


def _link(short: bool, name: str, obj: griffe.Object, pkg: griffe.Module) -> str:
    label = name.rsplit(".", 1)[-1] if short else name
    target = _resolve(name, obj, pkg)
    if target is None:
        return f"`{label}`"
    return f"[`{label}`][{target}]"


def _resolve(name: str, obj: griffe.Object, pkg: griffe.Module) -> str | None:
    """The documented path of a dirloss object named in a role, or None (rendered as code).

    The name is looked up as written, then in the docstring's module and class; a class or
    function that the package re-exports is linked under ``dirloss.Name``, where the API
    page documents it.
    """
    if name.split(".")[-1].startswith("_"):
        return None
    module = obj if obj.is_module else obj.module
    scopes = [name, f"{module.path}.{name}", f"{pkg.path}.{name}"]
    if obj.parent is not None and obj.parent.is_class:
        scopes.insert(1, f"{obj.parent.path}.{name}")
    for path in scopes:
        try:
            target = pkg.modules_collection.get_member(path)
            canonical = target.canonical_path
            if target.is_module or not target.has_docstring:
                return None  # no anchor of its own on the API page
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        parts = canonical.split(".")
        for i in range(1, len(parts)):
            exported = pkg.members.get(parts[i])
            if exported is not None and exported.canonical_path == ".".join(parts[: i + 1]):
                return ".".join([pkg.path, *parts[i:]])
        return canonical
    return None
