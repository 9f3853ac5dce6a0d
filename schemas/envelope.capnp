@0xace5c86793aa8786;
# The unit of delivery between nodes and relays.

struct Envelope {
  id @0 :Data;            # 16 random bytes chosen by the sender; duplicates are dropped by id
  recipient @1 :Data;     # mailbox: SHA-256 of the recipient's Ed25519 identity key (32 bytes)
  kind @2 :Kind;
  payload @3 :Data;       # MLS message bytes (RFC 9420 MLSMessage)
  groupId @4 :Data;       # MLS group id, empty for a Welcome (the joiner learns it from the Welcome)
  createdAt @5 :UInt64;   # sender's clock, milliseconds since the Unix epoch

  enum Kind {
    commit @0;
    welcome @1;
    proposal @2;
    application @3;
    keyPackageRequest @4;
    sealed @5;            # sealed sender: payload is a SealedBox (node/core/sealed.py), groupId
                          # empty; the relay sees the mailbox only
    deliveryFailed @6;    # made by a relay, never by a node: payload is a DeliveryFailure naming
                          # envelopes the caller delivered there that expired unfetched
  }
}

# Inside a sealed envelope's box, once opened with the recipient's envelope key: who sent it,
# the envelope as it was meant (its own id, kind, payload, group, time), and the sender's
# Ed25519 signature over them (docs/protocol/wire-format.md, "Sealed sender").
struct SealedContent {
  sender @0 :Data;        # the sender's Ed25519 identity key (32 bytes)
  envelope @1 :Data;      # the inner Envelope, encoded on its own; never of kind sealed
  signature @2 :Data;     # 64 bytes
}

# The payload of a deliveryFailed envelope: what a relay dropped undelivered, for the node that
# delivered it (it asked, with DeliverParams.failureNotice). A node takes one only from its own
# relay's fetch answer.
struct DeliveryFailure {
  reason @0 :Reason;
  envelopes @1 :List(Undelivered);   # at most 1,024

  enum Reason {
    expired @0;           # its recipient did not fetch it within the relay's envelope TTL
  }
}

struct Undelivered {
  id @0 :Data;            # the envelope's id, as the caller delivered it (16 bytes)
  recipient @1 :Data;     # the mailbox it was for (32 bytes)
}
