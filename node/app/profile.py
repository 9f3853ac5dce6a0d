"""A node's data directory: everything it needs to come back as itself after a restart.

``identity.key``  the Ed25519 identity, sealed with the passphrase ("QPCE" format)
``store.salt``    the Argon2id salt for the keys below (mode 0600)
``node.db``       SQLCipher: contacts, inbox, seen ids, messages, outbox, relay cursor
``mls.state``     the MLS engine's keys and groups, encrypted by the binding
"""

from __future__ import annotations

from pathlib import Path

from node.app.node import Node
from node.app.router import RelayInfo
from node.app.store import NodeStore, derive_store_keys
from node.core.keyfile import DEFAULT_KDF, KdfParams
from node.mls import MlsClient
from node.transport.keystore import load_or_create_identity
from node.transport.runtime import ThreadRunner


async def open_node(
    data_dir: Path,
    passphrase: bytes,
    *,
    name: str,
    relay: RelayInfo | None = None,
    kdf: KdfParams = DEFAULT_KDF,
) -> tuple[Node, bool]:
    """Open (or create) the node kept in ``data_dir``. Returns (node, created)."""
    runner = ThreadRunner(f"qpc-{name}")
    try:
        identity, created = await load_or_create_identity(
            data_dir / "identity.key", passphrase, runner, kdf
        )
        db_key, mls_key = await runner(lambda: derive_store_keys(data_dir, passphrase, kdf))
        store = await runner(lambda: NodeStore(data_dir / "node.db", db_key))
        mls = await runner(lambda: MlsClient(identity, data_dir / "mls.state", mls_key))
    except BaseException:
        runner.shutdown()
        raise
    node = Node(identity, name=name, relay=relay, store=store, mls=mls, runner=runner)
    node.adopt_runner(runner)
    return node, created
