"""The node's record, in ``node.db``, of the point ``mls.state`` has reached (ADR 0004).

After every MLS call (on the call's own thread, before its result reaches the node) the node
reads what the binding appended, checks its tag, and hands the file's new mark (base salt,
length and last tag) to the store, which writes it with its next transaction: the one that
keeps what the call produced, as a rule. A call is never made while the previous call's mark
is unwritten (:meth:`StateMarks.before` writes it first), so
``mls.state`` is at most one call ahead of ``node.db``; at the next start
:func:`~node.core.mls_state_file.pairing_problem` refuses any other pairing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from node.app.store import NodeStore
from node.core.errors import StorageError
from node.core.mls_state_file import HEADER_LEN, Mark, StateImage, extend, parse

log = logging.getLogger(__name__)


class StateMarks:
    """A :class:`~node.mls.StateWatch` that writes marks to the node's store."""

    def __init__(
        self,
        path: Path,
        key: bytes,
        store: NodeStore,
        image: StateImage | None,
        *,
        unrecorded: bool,
    ) -> None:
        """``image``: the file as checked at open (None: not created yet, and recorded after
        the call that creates it); ``unrecorded``: ``node.db`` does not hold its mark yet,
        and the next call records it first."""
        self._path = path
        self._key = key
        self._store = store
        self._image = image
        self._recorded: Mark | None = None if image is None or unrecorded else image.mark
        self._dirty = unrecorded
        self.failure: str | None = None

    @property
    def name(self) -> str:
        return str(self._path)

    def before(self) -> None:
        if self._dirty:
            self._note()
        if self._store.mls_mark_pending:
            try:
                self._store.flush_mls_mark()
            except StorageError as exc:
                self.failure = f"cannot record where {self._path.name} stands: {exc}"
                raise StorageError(self.failure) from exc
        self.failure = None

    def after(self) -> None:
        # The mark goes with the store's next transaction (typically the one that keeps what
        # this call produced), or at the next call's before(): never two calls ahead.
        self._dirty = True
        try:
            self._note()
        except StorageError as exc:
            # The next call's before() tries again, and refuses the call if it still fails.
            log.warning("%s", exc)

    def _note(self) -> None:
        image = self._read()
        mark = image.mark
        if mark != self._recorded:
            self._store.defer_mls_mark(mark.to_bytes(), mark.salt)
            self._recorded = mark
        self._image = image
        self._dirty = False

    def _read(self) -> StateImage:
        try:
            with self._path.open("rb") as file:
                header = file.read(HEADER_LEN)
                image = self._image
                if (
                    image is not None
                    and header == image.header
                    and os.fstat(file.fileno()).st_size >= image.ends[-1]
                ):
                    # The same base: only the records appended since need checking.
                    file.seek(image.ends[-1])
                    return extend(image, file.read(), image.ends[-1])
                file.seek(0)
                return parse(file.read(), self._key)
        except OSError as exc:
            self.failure = f"cannot read {self._path.name}: {exc.strerror}"
            raise StorageError(self.failure) from exc
        except StorageError as exc:
            self.failure = f"{self._path.name} {exc}"
            raise StorageError(self.failure) from exc
