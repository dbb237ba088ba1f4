"""What the checkpoint tests share: a journal on a disk that is full."""

from __future__ import annotations

from batchcore import Journal


class Full(Journal):
    """A journal whose file cannot grow past its first pages: SQLite's "database or disk is
    full", as on a full disk."""

    def open(self, fingerprint: str) -> Journal:
        super().open(fingerprint)
        assert self.connection is not None
        pages = self.connection.execute("pragma page_count").fetchone()[0]
        self.connection.execute(f"pragma max_page_count = {pages + 1}")
        return self
