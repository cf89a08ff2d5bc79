"""Reading rendered reports back in tests: one stdlib HTML parser for every report test."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PREFIX = "data:image/png;base64,"


class ReportParser(HTMLParser):
    """Collects what the tests look at: tags, ids, src/href values, body rows of tables that
    have an id (cell text with whitespace collapsed) with each row's class, and all text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.start_tags: list[str] = []
        self.imgs: list[dict[str, str | None]] = []
        self.links: list[tuple[str, str, str]] = []  # (tag, attr, value)
        self.ids: set[str] = set()
        self.text_parts: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.row_classes: dict[str, list[str]] = {}
        self._table: str | None = None
        self._in_tbody = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.start_tags.append(tag)
        if a.get("id"):
            self.ids.add(a["id"])
        for name in ("src", "href", "action", "data", "poster", "srcset"):
            if a.get(name) is not None:
                self.links.append((tag, name, a[name]))
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
            self.row_classes[self._table] = []
        elif tag == "tbody" and self._table:
            self._in_tbody = True
        elif tag == "tr" and self._table and self._in_tbody:
            self._row = []
            self.row_classes[self._table].append(a.get("class") or "")
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_tbody = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text_parts.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.text_parts).split())


def parse(html: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(html)
    parser.close()
    return parser


def decode_png(uri: str) -> bytes:
    """The PNG bytes of a ``data:image/png;base64,`` URI (asserting that it is one)."""
    assert uri.startswith(PNG_PREFIX), uri[:40]
    data = base64.b64decode(uri[len(PNG_PREFIX) :], validate=True)
    assert data.startswith(PNG_SIGNATURE)
    return data
