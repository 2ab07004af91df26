#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets to fuzz/seeds/<target>/ (needs `cryptography`).

The key is the targets' fixed Ed25519 key (32 bytes of 7), the time their NOW."""
import base64, json, pathlib
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

NOW = 1_800_000_000
CLIENT = "fuzz-otter-00001@localhost/pcc"
KEY = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))
PUB = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
SEEDS = pathlib.Path(__file__).resolve().parent / "seeds"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def js(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def jws(header, claims) -> str:
    signing_input = f"{b64(js(header))}.{b64(js(claims))}"
    return f"{signing_input}.{b64(KEY.sign(signing_input.encode()))}"


def write(target: str, name: str, data: bytes) -> None:
    path = SEEDS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(PUB), "d": b64(bytes([7] * 32))}
write("secret", "valid", f"secret-token:personal-clients:v1:{b64(js(jwk))}".encode())
write("secret", "valid-padded", f"  secret-token:ns:v1:{b64(js(jwk))}\n".encode())
write("secret", "no-x", f"secret-token:ns:v1:{b64(js({k: v for k, v in jwk.items() if k != 'x'}))}".encode())
write("secret", "wrong-v", f"secret-token:ns:v2:{b64(js(jwk))}".encode())

claims = {"iss": CLIENT, "sub": CLIENT, "aud": "localhost", "iat": NOW, "exp": NOW + 120, "jti": "j1"}
sdk_header = {"alg": "EdDSA", "nonce": "a1b2c3d4e5f60718293a4b5c6d7e8f90"}
sdk_claims = {"iss": CLIENT, "sub": CLIENT, "aud": "localhost", "exp": NOW + 120, "iat": NOW, "nbf": NOW - 120}
write("assertion", "valid", b"\0" + jws({"alg": "EdDSA", "typ": "JWT"}, claims).encode())
write("assertion", "sdk", b"\0" + jws(sdk_header, sdk_claims).encode())
write("assertion", "signed-valid", b"\1" + js({"alg": "EdDSA", "typ": "JWT"}) + b"\xff" + js(claims))
write("assertion", "signed-sdk", b"\1" + js(sdk_header) + b"\xff" + js(sdk_claims))
write("assertion", "signed-aud-list", b"\1" + js({"alg": "Ed25519"}) + b"\xff"
      + js({**claims, "aud": ["https://localhost:8443"], "nbf": NOW - 5.5}))

access = {"iss": "https://localhost", "sub": "alice", "aud": "https://localhost", "iat": NOW, "exp": NOW + 600,
          "jti": "0190c0de-0000-7000-8000-000000000000", "roles": ["user"], "client_id": CLIENT}
write("bearer", "valid", b"\0" + jws({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}, access).encode())
write("bearer", "hs256", b"\0" + jws({"alg": "HS256", "kid": "k1"}, access).encode())
write("bearer", "signed-valid", b"\1" + js({"alg": "EdDSA", "kid": "k1"}) + b"\xff" + js(access))
write("bearer", "signed-aud-many", b"\1" + js({"alg": "Ed25519", "crit": ["b64"]}) + b"\xff"
      + js({**access, "aud": ["a", "https://localhost"]}))

after = "0190c0de-0000-7000-8000-000000000001"
for name, user, query in [("list", "alice", "list"), ("search", "alice", "search:otter"), ("unicode", "ü\"\\\u2028", "list")]:
    token = b64(js({"u": user, "q": query, "a": after}))
    write("page_token", name, f"{token}\0{user}\0bob\0{query}".encode())
write("page_token", "empty", b"\0alice\0bob")
