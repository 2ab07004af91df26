"""authlib (its requests integration, unmodified) as a client of the service.

The client knows only the issuer URL: it reads the token endpoint from the service's RFC 8414
metadata, then authlib's own `private_key_jwt` method (PrivateKeyJWT) signs each assertion with the
credential's secret and OAuth2Session trades it for an access token, which then reads the
credential's owner's clients and introspects as active.

authlib's defaults do not meet the service's rules, and test_authlib_defaults_are_refused
keeps track of each difference (authlib 1.9.10, pinned in run.sh):
- aud: PrivateKeyJWT without a token_endpoint signs for the URL the request goes to
  (rfc7523/auth.py, ClientSecretJWT.__call__: `token_endpoint = uri`), the token endpoint's URL;
  the service takes only its issuer or its public host. PrivateKeyJWT(token_endpoint=ISSUER)
  makes aud the issuer.
- exp: sign_jwt_bearer_assertion signs for an hour (rfc7523/assertion.py:
  `expires_in = kwargs.pop("expires_in", 3600)`), and PrivateKeyJWT.sign passes no expires_in
  on, nor takes one (authlib issue #857); the service takes at most 5 minutes (+60 s of skew).
  Only a subclass that overrides sign() and calls private_key_jwt_sign(..., expires_in=...)
  shortens it.
- `claims=` is no way around that: _sign writes the jti it generates into the caller's claims
  dict (rfc7523/assertion.py: `claims["jti"] = generate_token(36)`), so every assertion of
  that PrivateKeyJWT carries the same jti after the first, which the service refuses as a replay.
- the key must be joserfc's OKPKey: PrivateKeyJWT.sign imports anything else as an RSA key
  (`RSAKey.import_key(auth.client_secret)`), so a JWK dict or an authlib.jose OKPKey fails.

The server here is a server of its own, started with --issuer and --public-host set to its own
address, since discovery hands out URLs under the issuer: the session's default server
(issuer http://localhost) would send authlib to port 80.
"""

import base64
import json
import subprocess
import time
from urllib.parse import parse_qs

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import OKPKey

from conftest import BINARY, Server, _child_env, serving

SECRET_PREFIX = "secret-token:personal-clients:v1:"
# The longest an assertion may live for the service (SPEC: exp at most 5 minutes ahead).
ASSERTION_LIFETIME = 300

# joserfc (authlib's JOSE library) warns that RFC 9864 deprecates "EdDSA" in favour of
# "Ed25519". The service's metadata offers both names; EdDSA, the first, is what the test signs
# with.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


class IssuerServer(Server):
    issuer: str = ""

    def mint(self, user, roles):
        """A user token for this server: mint-token must be told the same issuer."""
        command = [str(BINARY), "mint-token", "--user", user, "--database-url", self.database_url,
                   "--issuer", self.issuer, "--public-host", self.address, "--ttl", "1h"]
        if roles:
            command += ["--roles", ",".join(roles)]
        result = subprocess.run(command, env=_child_env(), capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, (
            f"mint-token exited {result.returncode}: {result.stderr.strip()}\n{self.describe()}")
        return result.stdout.strip()

    def wait_for_log(self, text, timeout=10.0):
        """Waits until the server's log holds `text` (the reason for a refusal goes only there)."""
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"{text!r} not in the server's log\n{self.describe()}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def issuer_server(request):
    for srv in serving(request, "pc-authlib-",
                       lambda address: ["--issuer", f"http://{address}", "--public-host", address],
                       IssuerServer):
        srv.issuer = f"http://{srv.address}"
        yield srv


# --- helpers ---------------------------------------------------------------------------------

def metadata(server):
    """The RFC 8414 document, checked to be the same as the OpenID Connect discovery one."""
    documents = []
    for name in ("oauth-authorization-server", "openid-configuration"):
        response = requests.get(f"{server.issuer}/.well-known/{name}", timeout=10)
        assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/json"), response.headers
        documents.append(response.json())
    assert documents[0] == documents[1], "the two discovery documents differ"
    return documents[0]


def create_credential(server, user_token, name):
    response = requests.post(
        f"{server.issuer}/api/v1/iam/personal_clients",
        headers={"Authorization": f"Bearer {user_token}"},
        json={"displayName": name, "scopedRoles": ["reader"], "expires": "86400s"}, timeout=10)
    assert response.status_code == 200, f"{response.status_code} {response.text}\n{server.describe()}"
    return response.json()


def key_from_secret(secret):
    """The secret's JWK as joserfc's OKPKey, the one key type PrivateKeyJWT takes as it is."""
    assert secret.startswith(SECRET_PREFIX), secret[:40]
    encoded = secret[len(SECRET_PREFIX):]
    jwk = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519"), sorted(jwk)
    return OKPKey.import_key(jwk)


def jwt_parts(token):
    def part(text):
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    header, claims, _ = token.split(".")
    return part(header), part(claims)


class AssertionLog:
    """A compliance hook that keeps the client_assertion of every token request authlib sends."""

    def __init__(self, session):
        self.sent = []
        session.register_compliance_hook("access_token_response", self)

    def __call__(self, response):
        form = parse_qs(response.request.body)
        self.sent.append((form, response.status_code))
        return response

    def last(self):
        form, _ = self.sent[-1]
        return jwt_parts(form["client_assertion"][0])


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """authlib's PrivateKeyJWT with a lifetime for its assertions.

    PrivateKeyJWT.sign calls private_key_jwt_sign without expires_in, so assertions live 3600 s
    (sign_jwt_bearer_assertion's default); private_key_jwt_sign passes expires_in through."""

    def __init__(self, *args, expires_in, **kwargs):
        super().__init__(*args, **kwargs)
        self.expires_in = expires_in

    def sign(self, auth, token_endpoint):
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id,
                                    token_endpoint=token_endpoint, claims=self.claims,
                                    header=self.headers, alg=self.alg, expires_in=self.expires_in)


def introspect(server, resource_server_token, token):
    response = requests.post(f"{server.issuer}/auth/v1/introspect", data={"token": token},
                             headers={"Authorization": f"Bearer {resource_server_token}"},
                             timeout=10)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    return response.json()


# --- the tests -------------------------------------------------------------------------------

def test_metadata_describes_the_token_endpoint(issuer_server):
    meta = metadata(issuer_server)
    assert meta["issuer"] == issuer_server.issuer
    assert meta["token_endpoint"] == f"{issuer_server.issuer}/auth/v1/token"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert meta["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert meta["token_endpoint_auth_signing_alg_values_supported"] == ["EdDSA", "Ed25519"]
    jwks = requests.get(meta["jwks_uri"], timeout=10)
    assert jwks.status_code == 200 and jwks.json()["keys"], jwks.text


def test_private_key_jwt_client_credentials(issuer_server):
    server = issuer_server
    meta = metadata(server)
    user_token = server.mint("authlib-user", ["reader", "writer"])
    created = create_credential(server, user_token, "authlib job")
    client_id, credential_id = created["client"]["clientId"], created["client"]["id"]
    key = key_from_secret(created["clientSecret"])

    session = OAuth2Session(
        client_id, key,
        token_endpoint_auth_method=ShortLivedPrivateKeyJWT(
            token_endpoint=meta["issuer"], alg="EdDSA", expires_in=ASSERTION_LIFETIME),
        token_endpoint=meta["token_endpoint"])
    sent = AssertionLog(session)
    try:
        token = session.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    except OAuthError as err:
        pytest.fail(f"token request refused: {err.error}: {err.description}\n{server.describe()}")
    assert token["token_type"].lower() == "bearer", token
    assert token["expires_in"] > 0 and token["access_token"], token

    # What authlib signed, configured so: the issuer as aud, 300 s of life, alg EdDSA.
    form, status = sent.sent[-1]
    assert status == 200
    assert form["grant_type"] == ["client_credentials"]
    assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    assert "client_id" not in form, "authlib's PrivateKeyJWT sends no client_id; the iss names it"
    header, claims = sent.last()
    assert header["alg"] == "EdDSA", header
    assert claims["iss"] == claims["sub"] == client_id, claims
    assert claims["aud"] == server.issuer, claims
    assert claims["exp"] - claims["iat"] == ASSERTION_LIFETIME, claims
    first_jti = claims["jti"]

    # The session sends the token: it reads its owner's clients.
    listed = session.get(f"{server.issuer}/api/v1/iam/personal_clients", timeout=10)
    assert listed.status_code == 200, f"{listed.status_code} {listed.text}"
    assert [c["clientId"] for c in listed.json()["list"]] == [client_id]
    rs_token = server.mint("authlib-rs", ["resource-server"])
    info = introspect(server, rs_token, token["access_token"])
    assert info["active"] is True, info
    assert (info["client_id"], info["sub"]) == (client_id, "authlib-user"), info

    # A second token: a fresh assertion (a new jti), accepted as the first.
    session.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    assert sent.last()[1]["jti"] != first_jti

    # The session fetches a new token by itself when its own is about to expire: with a leeway
    # longer than the token's life, before each request (OAuth2Client.ensure_active_token, for
    # grant_type client_credentials).
    renewing = OAuth2Session(
        client_id, key,
        token_endpoint_auth_method=ShortLivedPrivateKeyJWT(
            token_endpoint=meta["issuer"], alg="EdDSA", expires_in=ASSERTION_LIFETIME),
        token_endpoint=meta["token_endpoint"], grant_type="client_credentials",
        leeway=token["expires_in"] + 3600)
    renewed = AssertionLog(renewing)
    renewing.fetch_token()
    for _ in range(2):
        response = renewing.get(f"{server.issuer}/api/v1/iam/personal_clients", timeout=10)
        assert response.status_code == 200, f"{response.status_code} {response.text}"
    assert [status for _, status in renewed.sent] == [200, 200, 200], renewed.sent

    # Revoked: its tokens stop working at once, and it gets no new one.
    revoked = requests.delete(f"{server.issuer}/api/v1/iam/personal_clients/{credential_id}",
                              headers={"Authorization": f"Bearer {user_token}"}, timeout=10)
    assert revoked.status_code == 200, f"{revoked.status_code} {revoked.text}"
    listed = session.get(f"{server.issuer}/api/v1/iam/personal_clients", timeout=10)
    assert listed.status_code == 401, f"{listed.status_code} {listed.text}"
    assert introspect(server, rs_token, token["access_token"]) == {"active": False}
    with pytest.raises(OAuthError) as raised:
        session.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    assert raised.value.error == "invalid_client", raised.value.description


def test_authlib_defaults_are_refused(issuer_server):
    """What authlib signs when left to its defaults, and what the service says of it."""
    server = issuer_server
    meta = metadata(server)
    user_token = server.mint("authlib-defaults", ["reader"])
    created = create_credential(server, user_token, "authlib defaults")
    client_id = created["client"]["clientId"]
    key = key_from_secret(created["clientSecret"])

    def attempt(method):
        session = OAuth2Session(client_id, key, token_endpoint_auth_method=method)
        sent = AssertionLog(session)
        try:
            session.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
        except OAuthError as err:
            return err.error, sent.last()[1]
        return "accepted", sent.last()[1]

    # 1. Nothing but the alg: aud is the token endpoint's URL, exp an hour ahead.
    outcome, claims = attempt(PrivateKeyJWT(alg="EdDSA"))
    assert claims["aud"] == meta["token_endpoint"], claims
    assert claims["exp"] - claims["iat"] == 3600, claims
    assert outcome == "invalid_client", f"aud = the token endpoint's URL: {outcome}"
    server.wait_for_log("audience_mismatch")

    # 2. The issuer as aud: still an hour of life, which is too long.
    outcome, claims = attempt(PrivateKeyJWT(token_endpoint=meta["issuer"], alg="EdDSA"))
    assert (claims["aud"], claims["exp"] - claims["iat"]) == (meta["issuer"], 3600), claims
    assert outcome == "invalid_client", f"exp an hour ahead: {outcome}"
    server.wait_for_log("assertion_too_long_lived")

    # 3. exp through claims=: the first token comes, the second does not, since authlib stored
    # the first jti in the claims dict and sends it again.
    now = int(time.time())
    method = PrivateKeyJWT(token_endpoint=meta["issuer"], alg="EdDSA",
                           claims={"exp": now + ASSERTION_LIFETIME})
    first_outcome, first = attempt(method)
    assert first_outcome == "accepted", f"exp via claims: {first_outcome}\n{server.describe()}"
    assert "jti" in method.claims, "authlib no longer writes its jti into the claims dict"
    second_outcome, second = attempt(method)
    assert second["jti"] == first["jti"]
    assert second_outcome == "invalid_client", f"a repeated jti: {second_outcome}"
    server.wait_for_log("replayed")
