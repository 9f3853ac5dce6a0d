@0xa6bc50ab19fa0164;
# One QUIC bidirectional stream carries one call: a length-prefixed Request, then one Response.
# The union's discriminant is the method ordinal.

using Env = import "envelope.capnp";

struct Request {
  union {
    deliver @0 :DeliverParams;
    fetch @1 :FetchParams;
    ack @2 :AckParams;
    fetchKeyPackage @3 :FetchKeyPackageParams;
    wait @4 :WaitParams;
    # Accounts (relay only; OPAQUE, RFC 9807). The password never leaves the client.
    registerStart @5 :RegisterStartParams;
    registerFinish @6 :RegisterFinishParams;
    loginStart @7 :LoginStartParams;
    loginFinish @8 :LoginFinishParams;
    authenticate @9 :AuthenticateParams;
    logout @10 :LogoutParams;
    # Directory (relay only): KeyPackages held for offline owners, and usernames.
    publishKeyPackages @11 :PublishKeyPackagesParams;
    resolveUser @12 :ResolveUserParams;
    resolveIdentity @13 :ResolveIdentityParams;
  }
}

struct DeliverParams {
  envelopes @0 :List(Env.Envelope);
  failureNotice @1 :Bool;   # relay: remember who delivered these, and if one expires unfetched
                            # put a deliveryFailed envelope in the caller's own mailbox there
                            # (ignored for sealed envelopes: their caller is a one-time key)
}

struct FetchParams {
  mailbox @0 :Data;       # must be the caller's own: SHA-256 of its proven identity key
  cursor @1 :UInt64;      # return envelopes stored after this cursor (0: from the start)
  limit @2 :UInt32;       # at most this many; the server may return fewer
}

struct AckParams {
  mailbox @0 :Data;       # must be the caller's own, as for fetch
  ids @1 :List(Data);     # envelope ids the mailbox owner has persisted
}

struct WaitParams {
  # Like fetch, but if nothing is stored after the cursor the server holds the call until
  # something arrives or timeoutMs passes (long poll), then answers with a FetchResult.
  mailbox @0 :Data;
  cursor @1 :UInt64;
  limit @2 :UInt32;
  timeoutMs @3 :UInt32;   # the server may wait less than this, never more
}

struct FetchKeyPackageParams {
  identity @0 :Data;      # Ed25519 identity key whose KeyPackage is wanted
}

struct PublishKeyPackagesParams {
  # The caller's own KeyPackages (RFC 9420 MLSMessages), each naming the caller's proven
  # identity key; one that names anyone else, or does not verify, refuses the whole call.
  keyPackages @0 :List(Data);   # single-use: added to the caller's pool, each handed out once
  lastResort @1 :List(Data);    # at most one per suite, preferred suite first: each replaces
                                # the caller's last-resort one of its suite
}

struct ResolveUserParams {
  username @0 :Text;      # as registered (see RegisterStartParams)
}

struct ResolveIdentityParams {
  identity @0 :Data;      # Ed25519 identity key
}

struct RegisterStartParams {
  username @0 :Text;      # 1-32 of a-z 0-9 . _ - (starting with a letter or digit)
  request @1 :Data;       # OPAQUE RegistrationRequest (32 bytes)
}

struct RegisterFinishParams {
  username @0 :Text;
  upload @1 :Data;        # OPAQUE RegistrationUpload (192 bytes): becomes the stored record
}

struct LoginStartParams {
  username @0 :Text;
  request @1 :Data;       # OPAQUE KE1 (96 bytes)
}

struct LoginFinishParams {
  loginId @0 :Data;       # from LoginStartResult; only the caller that started it may finish
  finalization @1 :Data;  # OPAQUE KE3 (64 bytes)
}

struct AuthenticateParams {
  token @0 :Data;         # a session token this caller's identity key was given at login
}

struct LogoutParams {
  token @0 :Data;         # revoked for good
}

struct Response {
  union {
    error @0 :Error;
    deliver @1 :DeliverResult;
    fetch @2 :FetchResult;      # also the answer to wait
    ack @3 :AckResult;
    fetchKeyPackage @4 :FetchKeyPackageResult;
    registerStart @5 :RegisterStartResult;
    registerFinish @6 :RegisterFinishResult;
    loginStart @7 :LoginStartResult;
    loginFinish @8 :SessionResult;
    authenticate @9 :SessionInfo;
    logout @10 :LogoutResult;
    publishKeyPackages @11 :PublishKeyPackagesResult;
    resolveUser @12 :ResolveUserResult;
    resolveIdentity @13 :ResolveIdentityResult;
  }
}

struct DeliverResult {
  accepted @0 :List(Data);   # ids now stored durably by the receiver (including ones it already had)
}

struct FetchResult {
  envelopes @0 :List(Env.Envelope);
  cursor @1 :UInt64;         # pass back to continue after the last envelope returned
  keyPackagesLow @2 :Bool;   # relay: the mailbox owner's single-use KeyPackages there run low
                             # in a suite it published (time to publishKeyPackages)
}

struct AckResult {
  removed @0 :UInt32;
}

struct FetchKeyPackageResult {
  keyPackage @0 :Data;       # an RFC 9420 MLSMessage holding a KeyPackage: the callee's preferred suite
  moreKeyPackages @1 :List(Data);  # one more KeyPackage per further suite the callee offers (at most 3)
}

struct RegisterStartResult {
  response @0 :Data;         # OPAQUE RegistrationResponse (64 bytes)
}

struct RegisterFinishResult {}

struct LoginStartResult {
  loginId @0 :Data;          # 16 bytes; the login must finish within the relay's login timeout
  response @1 :Data;         # OPAQUE KE2 (320 bytes): the same shape for a name nobody holds
}

struct SessionResult {
  token @0 :Data;            # 32 bytes, bound to the caller's identity key; the relay keeps a hash
  expiresAtMs @1 :UInt64;
}

struct SessionInfo {
  expiresAtMs @0 :UInt64;
}

struct LogoutResult {}

struct PublishKeyPackagesResult {
  counts @0 :List(KeyPackageCount);  # one per suite the relay holds KeyPackages of for the caller
  maxPerSuite @1 :UInt32;            # the most single-use KeyPackages it holds per suite
}

struct KeyPackageCount {
  suite @0 :UInt16;          # MLS ciphersuite code point
  singleUse @1 :UInt32;      # held and not yet handed out
  lastResort @2 :Bool;       # whether a last-resort KeyPackage of this suite is held
}

struct ResolveUserResult {
  identity @0 :Data;         # the identity key that last logged in as the username
}

struct ResolveIdentityResult {
  username @0 :Text;         # the username the identity key last logged in as
}

struct Error {
  code @0 :Code;
  message @1 :Text;          # short, for humans; never a traceback or secret

  enum Code {
    internal @0;
    malformedRequest @1;
    frameTooLarge @2;
    unknownMethod @3;
    unauthorized @4;
    notFound @5;
    limitExceeded @6;
    timeout @7;
    rateLimited @8;      # the caller spent its call (or new-mailbox) allowance: retry later
    quotaExceeded @9;    # the recipient's mailbox holds as many envelopes or bytes as allowed
    tooLarge @10;        # an envelope no fetch answer could carry
    storeFull @11;       # the relay's total store (bytes or mailboxes) is full
    busy @12;            # the callee is out of call slots or buffer space: retry later
    unauthenticated @13; # no valid session (log in), a wrong username or password, or a token
                         # that is expired, revoked or another identity's
    conflict @14;        # the username is already registered
    sealedRefused @15;   # this relay does not take sealed-sender envelopes
                         # (allow_sealed_sender = false): send them unsealed
  }
}
