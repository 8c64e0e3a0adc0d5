"""Griffe extension for the API reference: doctest lines become fenced code.

Many docstrings put ``>>>`` examples straight under a prose line (not in an
indented Google ``Examples:`` section); Markdown would read ``people[0]["id"]``
in them as reference links, which ``mkdocs build --strict`` rejects.
"""

import re

import griffe

_PROMPT = re.compile(r"^(\s*)>>> ")


def fence_doctests(text):
    """Wraps every run of doctest lines (prompts, continuations, output) in a pycon fence."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = _PROMPT.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, block = m.group(1), []
        while i < len(lines) and lines[i].strip():  # a doctest ends at a blank line
            block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
            i += 1
        out += [indent + "```pycon"] + [indent + b for b in block] + [indent + "```"]
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fences the doctests of every docstring before mkdocstrings renders it."""

    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None and ">>> " in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
