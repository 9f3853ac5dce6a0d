"""``open_node``: a node opened from (or created in) its data directory (``node.app.datadir``).

A new directory is created whole; an existing one opens only if every state file is there,
intact, and ``node.db`` and ``mls.state`` are of one moment. Otherwise the node does not start
and the error names the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from node.app.datadir import MLS_STATE, Fresh, Opened, create, open_existing, problems_of_layout
from node.app.limits import NodeLimits
from node.app.node import Node
from node.app.router import RelayInfo
from node.app.state_marks import StateMarks
from node.app.store import SALT_SIZE
from node.core.errors import StorageError
from node.core.keyfile import DEFAULT_KDF, SEAL_RANDOM_SIZE, KdfParams
from node.core.runtime import Runtime
from node.mls import MlsClient

log = logging.getLogger(__name__)


async def open_node(
    data_dir: Path,
    passphrase: bytes,
    runtime: Runtime,
    *,
    name: str,
    relay: RelayInfo | None = None,
    kdf: KdfParams = DEFAULT_KDF,
    limits: NodeLimits | None = None,
    sealed_sender: bool = True,
) -> tuple[Node, bool]:
    """Open (or create) the node kept in ``data_dir``. Returns (node, created).

    The command line builds ``runtime`` (the real one) and closes it after the node stopped;
    a simulation hands in its own, so a simulated node restarts from its data directory too.
    Raises :class:`~node.app.datadir.DataDirError` for a directory that cannot be used as it
    is.
    """
    if not passphrase:
        raise StorageError("a passphrase is required to protect the identity key")
    run = runtime.run_blocking
    # A directory whose layout is wrong is not new: opening it names the problem.
    is_new, _ = await run(lambda: problems_of_layout(data_dir))
    opened: Opened
    if is_new:
        fresh = Fresh(
            runtime.random_bytes(32),
            runtime.random_bytes(SEAL_RANDOM_SIZE),
            runtime.random_bytes(SALT_SIZE),
        )
        opened = await run(lambda: create(data_dir, passphrase, kdf, fresh))
    else:
        opened = await run(lambda: open_existing(data_dir, passphrase, kdf))
        if opened.ahead:
            log.info("%s: mls.state is one call ahead of node.db (a crash between them)", data_dir)
    store, identity, mls_key = opened.store, opened.identity, opened.mls_key
    watch = StateMarks(
        data_dir / MLS_STATE, mls_key, store, opened.image, unrecorded=opened.unrecorded
    )
    try:
        mls = await run(
            lambda: MlsClient(identity, runtime, data_dir / MLS_STATE, mls_key, watch=watch)
        )
    except BaseException:
        await run(store.close)
        raise
    node = Node(
        identity,
        runtime,
        name=name,
        relay=relay,
        store=store,
        mls=mls,
        limits=limits,
        sealed_sender=sealed_sender,
    )
    return node, is_new
