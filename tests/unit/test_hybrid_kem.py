"""The X-Wing-style envelope KEM: round trips, sizes, tampering, bad keys, known answers."""

from __future__ import annotations

import hashlib

import pytest

from node.core import hybrid_kem
from node.core.errors import CryptoError
from node.core.hybrid_kem import HybridPrivateKey, decapsulate, encapsulate, generate_keypair

# Known-answer vector: the last one of draft-connolly-cfrg-xwing-kem-10, Appendix C.
KAT_SEED = bytes.fromhex("ef58538b8d23f87732ea63b02b4fa0f4873360e2841928cd60dd4cee8cc0d4c9")
KAT_PUBLIC_SHA256 = "6b080d6b84f095342092fa7a22423e58bd681397ad0ef00eac92bd254db4fa95"
KAT_CIPHERTEXT = bytes.fromhex(
    "0d2e38cbf17a2e2e4e0c87a94ca1e7701ae1552e02509b3b00f9c82c39e3fd435b05b91275f47abc9f102142"
    "9a26a346598cd6cd9efdc8adc1dbc35036d0290bf89733c835309202232f9bf652ea82f3d49280d6e8a3bd31"
    "35fb883445ab5b074d949c5350c7c7d6ac59905bdbfce6639da8a9d4b390ecc1dd05522d2956f2d37a055939"
    "96e5cb3fd8d5a9eb52417732e1ebf545588713b4760227115aab7ada178dadbca583b26cfedba2888a0c95b9"
    "50bf07f750d7aa8103798aa3470a042c0105c6a037de2f9ebc396021b2ba2c16aba696fbac3454dc8e053b8f"
    "a55edd45215eeb57a1eab9106fb426b375a9b9e5c3419efc7610977e72640f9fd1b2ec337de33c35e5a7581b"
    "2aae4d8ee86d2e0ebf82a1350714de50d2d788687878a19644ae4e3175e8d59dc90171b3badeff65aeaf600e"
    "5e5483a3595fdeb40cbafcbd040c29a2f6900533ae999d24f54dfcef748c30313ca447cdddfa57ad78eaa890"
    "e90f3f7bf8d116968a5713cc75fd0408f36364fa265c5617039304eaeac4cbee6fc49b9fe2276768cdbec2d7"
    "3a507b543cc028dc1b154b7c2b0412254c466a94a8d6ea3a47e1743469bd45c08f54cf965884be3696e96174"
    "1ede16e3b1bc4feb93faaef31d911dc0cb3fa90bcda991959a9d2cbc817a5564c5c01177a59e9577589ea344"
    "d60cf5b0aa39f31863febd54603ca87ad2363c766642a3f52557bcd9e4c05a87665842ba336b83156a677030"
    "f0bad531a8387a1486a599caa748fcea7bdc1eb63f3cdb97173551ab7c1c36b69acbbdb2ff7a1e7bc7043963"
    "2ddc67b97f3da1f59b3c1588515957cb8a2f86ab635ce0a78b7cdf24eac3445e8fc8b79ba04da9e903f49a7d"
    "912c197a84b4cfabc779b97d24788419bcf58035db99717edb9fd1c1df8c4005f700eabba528ddfcbaeda6dd"
    "30754f795948a34c9319ab653524b19931c7900c4167988af52292fe902e746b524d20ceffb4339e8f5535f4"
    "1cf35f0f8ea8b4a7b949c5d2381116b146e9b913a83a3fa1c65ff9468c835fe4114554a6c66a80e1c9a6bb06"
    "4b380be3c95e5595ec979bf1c85aa938938e3f10e72b0c87811969e8ab0d83de0b0604c4016ac3a015e19514"
    "089271bdc6ebf2ec56fab6018e44de749b4c36cc235e370da8466dbdc253542a2d704eb3316fd70d5d238cb7"
    "eaaf05966d973f62c7ef43b9a806f4ed213ac8099ea15d61a902444160883f6bf441a3e1469945c9b79489ea"
    "18390f1ebc83caca10bdb8f2429877b52bd44c94a228ef91c392ef5398c5c83982701318ccedab92f7a279c4"
    "fddebaa7fe5e986c48b7d8135b3fe4cd15be2004ce73ff86b1e55f8ecd6ba5b8114315f8e716ef3ab0a64564"
    "a4644651166ebd68b1f783e2e443dbccadfe189368647629f1a12215840b7f1d026de2f665c2eb023ff51a6d"
    "f160912811ee03444ae4227fb941dc9ec4f31b445006fd384de5e60e0a5061b50cb1202f863090fc05eb814e"
    "2d42a03586c0b56f533847ac7b8184ce9690bc8dece32a88ca934f541d4cc520fa64de6b6e1c3c8e03db5971"
    "a445992227c825590688d203523f527161137334"
)
KAT_SHARED = bytes.fromhex("953f7f4e8c5b5049bdc771d1dffada0dd961477d1a2ae0988baa7ea6898d893f")


def test_sizes_match_x_wing() -> None:
    private, public = generate_keypair()
    shared, ciphertext = encapsulate(public)
    assert len(public) == hybrid_kem.PUBLIC_KEY_SIZE == 1216
    assert len(ciphertext) == hybrid_kem.CIPHERTEXT_SIZE == 1120
    assert len(shared) == hybrid_kem.SHARED_SECRET_SIZE == 32
    assert len(private.seed) == 32


def test_round_trip() -> None:
    private, public = generate_keypair()
    shared, ciphertext = encapsulate(public)
    assert decapsulate(private, ciphertext) == shared


def test_each_encapsulation_is_fresh() -> None:
    _, public = generate_keypair()
    (s1, c1), (s2, c2) = encapsulate(public), encapsulate(public)
    assert s1 != s2 and c1 != c2


def test_private_key_reloads_from_its_seed() -> None:
    private, public = generate_keypair()
    again = HybridPrivateKey(private.seed)
    assert again.public_key == public
    shared, ciphertext = encapsulate(public)
    assert decapsulate(again, ciphertext) == shared


def test_known_answer_vector_from_the_x_wing_draft() -> None:
    private, public = generate_keypair(KAT_SEED)
    assert hashlib.sha256(public).hexdigest() == KAT_PUBLIC_SHA256
    assert decapsulate(private, KAT_CIPHERTEXT) == KAT_SHARED


@pytest.mark.parametrize("where", [0, 500, 1087, 1088, 1119])
def test_tampered_ciphertext_gives_a_different_key(where: int) -> None:
    private, public = generate_keypair()
    shared, ciphertext = encapsulate(public)
    tampered = bytearray(ciphertext)
    tampered[where] ^= 0x01
    assert decapsulate(private, bytes(tampered)) != shared


def test_wrong_private_key_gives_a_different_key() -> None:
    _, public = generate_keypair()
    other, _ = generate_keypair()
    shared, ciphertext = encapsulate(public)
    assert decapsulate(other, ciphertext) != shared


@pytest.mark.parametrize(
    "public",
    [
        b"",
        bytes(1215),
        bytes(1217),
        b"\xff" * 1216,  # ML-KEM coefficients above the modulus fail FIPS 203's key check
    ],
    ids=["empty", "short", "long", "mlkem-out-of-range"],
)
def test_malformed_public_keys_raise_crypto_error(public: bytes) -> None:
    with pytest.raises(CryptoError):
        encapsulate(public)
    with pytest.raises(CryptoError):
        hybrid_kem.check_public_key(public)


def test_low_order_x25519_share_raises_crypto_error() -> None:
    _, public = generate_keypair()
    degenerate = public[: hybrid_kem.MLKEM_PUBLIC_KEY_SIZE] + bytes(32)
    with pytest.raises(CryptoError):
        encapsulate(degenerate)


@pytest.mark.parametrize("size", [0, 1119, 1121])
def test_ciphertext_of_the_wrong_size_raises(size: int) -> None:
    private, _ = generate_keypair()
    with pytest.raises(CryptoError):
        decapsulate(private, bytes(size))


def test_bad_seed_raises() -> None:
    with pytest.raises(CryptoError):
        HybridPrivateKey(bytes(31))


def test_repr_hides_the_secret() -> None:
    private, _ = generate_keypair()
    assert private.seed.hex() not in repr(private)
