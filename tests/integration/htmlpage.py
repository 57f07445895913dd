"""What a test reads off one of the stand-ins' HTML pages (MFU's object page, Lime's
card): its title, the text of each element carrying ``data-<attribute>``, and its
links as [text, href], in page order."""

from __future__ import annotations

from html.parser import HTMLParser


class Page(HTMLParser):
    def __init__(self, html: str, attribute: str = "field") -> None:
        super().__init__(convert_charrefs=True)
        self.attribute = f"data-{attribute}"
        self.title = ""
        self.values: dict[str, str] = {}  # data-<attribute> value -> the element's text
        self.links: list[list[str]] = []
        self._open: list[tuple[str, str]] = []  # (tag, what collects its text)
        self._texts: dict[str, str] = {}
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "title":
            self._open.append((tag, "title"))
        elif tag == "a":
            self.links.append(["", found.get("href") or ""])
            self._open.append((tag, f"link:{len(self.links) - 1}"))
        elif found.get(self.attribute) is not None:
            self._open.append((tag, f"value:{found[self.attribute]}"))
        else:
            return
        self._texts[self._open[-1][1]] = ""

    def handle_data(self, data: str) -> None:
        for _, name in self._open:
            self._texts[name] += data

    def handle_endtag(self, tag: str) -> None:
        if not self._open or self._open[-1][0] != tag:
            return
        _, name = self._open.pop()
        text = " ".join(self._texts.pop(name).split())
        kind, _, key = name.partition(":")
        if kind == "title":
            self.title = text
        elif kind == "link":
            self.links[int(key)][0] = text
        else:
            self.values[key] = text
