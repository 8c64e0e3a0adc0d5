"""MkDocs hook: griffe reads ``__all__`` statically and cannot expand a starred name.

``keras_dpn.models.__all__`` ends with ``*MODELS`` (every registered variant, added by
``@register_model``), valid Python that griffe reports as "Unsupported item in ...
__all__"; in a strict build that notice would fail the site. Only that notice is dropped:
every other warning (broken links, anchors, missing objects) still fails the build.
"""

import logging
import re

_NOTICE = re.compile(r"Unsupported item in [\w.]+\.__all__: \w+ \(use strings only\)")


class _DropStarredAllNotice(logging.Filter):
    def filter(self, record):
        return not _NOTICE.search(record.getMessage())


def on_startup(**kwargs):
    for name in ("griffe", "mkdocs.plugins.griffe", "mkdocs.plugins.mkdocstrings_handlers.python"):
        logging.getLogger(name).addFilter(_DropStarredAllNotice())
