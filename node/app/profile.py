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
from node.app.store import SALT_SIZE, NodeStore, derive_store_keys
from node.core.keyfile import DEFAULT_KDF, KdfParams
from node.core.runtime import Runtime
from node.mls import MlsClient
from node.transport.keystore import load_or_create_identity


async def open_node(
    data_dir: Path,
    passphrase: bytes,
    runtime: Runtime,
    *,
    name: str,
    relay: RelayInfo | None = None,
    kdf: KdfParams = DEFAULT_KDF,
) -> tuple[Node, bool]:
    """Open (or create) the node kept in ``data_dir``. Returns (node, created).

    The command line builds ``runtime`` (the real one) and closes it after the node stopped;
    a simulation hands in its own, so a simulated node restarts from its data directory too.
    """
    run = runtime.run_blocking
    identity, created = await load_or_create_identity(
        data_dir / "identity.key", passphrase, runtime, kdf
    )
    fresh_salt = runtime.random_bytes(SALT_SIZE)
    db_key, mls_key = await run(lambda: derive_store_keys(data_dir, passphrase, kdf, fresh_salt))
    store = await run(lambda: NodeStore(data_dir / "node.db", db_key))
    try:
        mls = await run(lambda: MlsClient(identity, runtime, data_dir / "mls.state", mls_key))
    except BaseException:
        await run(store.close)
        raise
    return Node(identity, runtime, name=name, relay=relay, store=store, mls=mls), created
