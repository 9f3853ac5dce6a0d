@0x81649560c9617d39;
# What an MLS application message of quicnprotochat carries (node/core/chat_payload.py).
# The plaintext is the 4 bytes "qpc1" and then this struct, packed; a plaintext without the
# prefix is read as UTF-8 text (a standard MLS client sends that).

struct ChatPayload {
  union {
    text @0 :Text;                 # a chat line, as its sender typed it
    info @1 :ConversationInfo;     # what the conversation is, sent by whoever named it
  }
}

struct ConversationInfo {
  kind @0 :Kind;
  name @1 :Text;                   # the sender's name for the group: a claim, shown as data
  senderName @2 :Text;             # the name the sender chose for itself: a claim as well

  enum Kind {
    direct @0;                     # two members: a direct message
    group @1;                      # a named group
  }
}
