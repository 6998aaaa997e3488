"""Client-side auth (bearer, client secret, SMART Backend Services) and scope syntax, with `responses`."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import pytest
import responses
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from smart_app.auth import (
    ENV_BEARER_TOKEN,
    ENV_CLIENT_SECRET,
    ENV_PRIVATE_KEY,
    AuthError,
    BackendServicesAuth,
    BearerAuth,
    ClientSecretAuth,
    NoAuth,
    SmartPrivateKeyJWT,
    create_auth,
    key_id,
    load_private_key,
    load_private_key_file,
    publish_jwks,
)
from smart_app.errors import ExitCode
from smart_app.http import RetryPolicy
from smart_app.scopes import Grant, describe_missing, format_scopes, missing, parse_granted

TOKEN_URL = "http://127.0.0.1:9000/auth/token"
CLIENT_ID = "rpm-billing-backend"
SCOPE = "system/Observation.rs system/ChargeItem.cu"


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "ec-1"})


class Clock:
    def __init__(self, now: float = 1_780_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token_response(n: int = 1, expires_in: int | None = 300, scope: str | None = SCOPE) -> dict:
    body: dict = {"access_token": f"access-{n}", "token_type": "bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    if scope is not None:
        body["scope"] = scope
    return body


def form(call) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def decode_assertion(assertion: str, key, alg: str) -> tuple[dict, dict]:
    # joserfc refuses RS384/ES384 unless asked for explicitly (research note §2.2)
    token = jwt.decode(assertion, key, algorithms=[alg])
    return dict(token.header), dict(token.claims)


# --------------------------------------------------------------------------------------------------
# Backend Services assertions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key_fixture", "alg"), [("rsa_key", "RS384"), ("ec_key", "ES384")])
@responses.activate
def test_backend_assertion_claims_and_a_new_jti_every_time(request, key_fixture, alg):
    key = request.getfixturevalue(key_fixture)
    responses.post(TOKEN_URL, json=token_response(1))
    responses.post(TOKEN_URL, json=token_response(2))
    clock = Clock()
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, key, SCOPE, clock=clock)
    headers: dict[str, str] = {}
    auth.apply(headers)
    assert headers["Authorization"] == "Bearer access-1"
    assert auth.refresh() is True
    auth.apply(headers)
    assert headers["Authorization"] == "Bearer access-2"

    public = type(key).import_key(key.as_dict(private=False))
    jtis = []
    for call in responses.calls:
        body = form(call)
        assert body["grant_type"] == "client_credentials"
        assert body["scope"] == SCOPE
        assert body["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        header, claims = decode_assertion(body["client_assertion"], public, alg)
        assert header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
        assert claims["iss"] == claims["sub"] == CLIENT_ID
        assert claims["aud"] == TOKEN_URL
        assert claims["iat"] == int(clock.now)
        assert 0 < claims["exp"] - claims["iat"] <= 300
        assert uuid.UUID(claims["jti"]).version == 4
        jtis.append(claims["jti"])
        assert "Authorization" not in call.request.headers  # no client secret in Basic auth
    assert len(set(jtis)) == 2


def test_assertion_signature_fails_with_another_key(rsa_key):
    signer = SmartPrivateKeyJWT(TOKEN_URL, alg="RS384", kid="rsa-1")

    class Client:
        client_id = CLIENT_ID
        client_secret = rsa_key

    assertion = signer.sign(Client(), TOKEN_URL)
    other = RSAKey.generate_key(2048)
    with pytest.raises(Exception, match="signature"):
        jwt.decode(assertion, other, algorithms=["RS384"])
    assert (
        decode_assertion(assertion, rsa_key, "RS384")[1]["exp"]
        - decode_assertion(assertion, rsa_key, "RS384")[1]["iat"]
        == 300
    )


def test_assertion_lifetime_over_five_minutes_is_refused():
    with pytest.raises(ValueError, match="300"):
        SmartPrivateKeyJWT(TOKEN_URL, alg="RS384", kid="k", lifetime=3600)


@responses.activate
def test_jku_header_when_a_jwks_url_is_registered(ec_key):
    responses.post(TOKEN_URL, json=token_response())
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, ec_key, SCOPE, jku="https://app.example/jwks.json")
    auth.authorize()
    header, _ = decode_assertion(form(responses.calls[0])["client_assertion"], ec_key, "ES384")
    assert header["jku"] == "https://app.example/jwks.json"


def test_backend_auth_refuses_a_public_key(rsa_key):
    public = RSAKey.import_key(rsa_key.as_dict(private=False))
    with pytest.raises(AuthError, match="private key"):
        BackendServicesAuth(TOKEN_URL, CLIENT_ID, public, SCOPE)


# --------------------------------------------------------------------------------------------------
# Token caching, refresh, granted scopes
# --------------------------------------------------------------------------------------------------


@responses.activate
def test_token_is_cached_until_expiry_minus_leeway(rsa_key):
    for n in (1, 2):
        responses.post(TOKEN_URL, json=token_response(n, expires_in=300))
    clock = Clock()
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, rsa_key, SCOPE, clock=clock, leeway=60)
    headers: dict[str, str] = {}
    for _ in range(5):
        auth.apply(headers)
    assert len(responses.calls) == 1 and headers["Authorization"] == "Bearer access-1"
    clock.now += 239
    auth.apply(headers)
    assert len(responses.calls) == 1
    clock.now += 1  # 240 s = 300 - 60 leeway
    auth.apply(headers)
    assert len(responses.calls) == 2 and headers["Authorization"] == "Bearer access-2"
    assert auth.token_requests == 2


@responses.activate
def test_a_short_lived_token_is_not_refetched_on_every_call(rsa_key):
    responses.post(TOKEN_URL, json=token_response(1, expires_in=60))
    responses.post(TOKEN_URL, json=token_response(2, expires_in=60))
    clock = Clock()
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, rsa_key, SCOPE, clock=clock, leeway=60)
    headers: dict[str, str] = {}
    auth.apply(headers)
    clock.now += 29
    auth.apply(headers)
    assert len(responses.calls) == 1  # renewed at half-life when the leeway exceeds it
    clock.now += 1
    auth.apply(headers)
    assert len(responses.calls) == 2


@responses.activate
def test_missing_expires_in_assumes_five_minutes(rsa_key):
    responses.post(TOKEN_URL, json=token_response(1, expires_in=None))
    responses.post(TOKEN_URL, json=token_response(2))
    clock = Clock()
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, rsa_key, SCOPE, clock=clock, leeway=60)
    auth.authorize()
    clock.now += 239
    auth.authorize()
    clock.now += 1
    auth.authorize()
    assert len(responses.calls) == 2


@responses.activate
def test_refresh_after_401_is_done_once_for_all_threads(rsa_key):
    responses.post(TOKEN_URL, json=token_response(1))
    responses.post(TOKEN_URL, json=token_response(2))
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, rsa_key, SCOPE)
    headers: dict[str, str] = {}
    auth.apply(headers)
    refused = headers["Authorization"]
    assert auth.refresh(failed=refused) is True  # first thread renews
    assert auth.refresh(failed=refused) is True  # second thread sees it was already renewed
    assert len(responses.calls) == 2


@responses.activate
def test_concurrent_workers_share_one_token_request(rsa_key):
    responses.post(TOKEN_URL, json=token_response(1))
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, rsa_key, SCOPE)
    barrier = threading.Barrier(8)

    def worker(_: int) -> str:
        barrier.wait()
        headers: dict[str, str] = {}
        auth.apply(headers)
        return headers["Authorization"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(worker, range(8)))
    assert set(results) == {"Bearer access-1"}
    assert len(responses.calls) == 1


@responses.activate
def test_granted_scopes_are_read_back_and_a_missing_permission_named(rsa_key):
    responses.post(TOKEN_URL, json=token_response(scope="system/Observation.read system/Patient.read"))
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, rsa_key, SCOPE)
    assert auth.granted_scopes is None  # not authorized yet
    gaps = auth.missing_scopes("system/Observation.rs system/ChargeItem.c")
    assert auth.granted_scopes == frozenset({"system/Observation.read", "system/Patient.read"})
    assert gaps == {Grant("system", "ChargeItem", frozenset("c"))}
    assert describe_missing(gaps) == "system/ChargeItem.c"


@responses.activate
def test_scope_absent_from_the_token_response_means_as_requested(rsa_key):
    responses.post(TOKEN_URL, json=token_response(scope=None))
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, rsa_key, SCOPE)
    auth.authorize()
    assert auth.granted_scopes == frozenset(SCOPE.split())
    assert auth.missing_scopes("system/ChargeItem.c") == set()


# --------------------------------------------------------------------------------------------------
# Client secret, token endpoint failures
# --------------------------------------------------------------------------------------------------


@responses.activate
def test_client_secret_basic():
    responses.post(TOKEN_URL, json=token_response())
    auth = ClientSecretAuth(TOKEN_URL, CLIENT_ID, "s3cret", "system/Patient.rs")
    headers: dict[str, str] = {}
    auth.apply(headers)
    assert headers["Authorization"] == "Bearer access-1"
    request = responses.calls[0].request
    expected = base64.b64encode(f"{CLIENT_ID}:s3cret".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    body = form(responses.calls[0])
    assert body == {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    assert request.req_kwargs["timeout"] == (5.0, 30.0)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (
            400,
            {"error": "invalid_client", "error_description": "unknown kid"},
            "invalid_client (unknown kid)",
        ),
        (401, {"error": "invalid_client"}, "invalid_client"),
        (400, {"error": "invalid_scope"}, "invalid_scope"),
        (403, "<html>denied</html>", "HTTP 403"),
        (200, {"token_type": "bearer"}, "without an access_token"),
        (200, {"access_token": "x", "token_type": "mac"}, "only Bearer"),
    ],
)
@responses.activate
def test_token_endpoint_refusals_are_auth_errors(rsa_key, status, body, message):
    kwargs = {"json": body} if isinstance(body, dict) else {"body": body}
    responses.post(TOKEN_URL, status=status, **kwargs)
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, rsa_key, SCOPE, sleep=lambda s: None)
    with pytest.raises(AuthError) as info:
        auth.apply({})
    assert message in str(info.value)
    assert info.value.exit_code == ExitCode.AUTH_ERROR
    assert len(responses.calls) == 1  # not retried


@responses.activate
def test_temporary_token_endpoint_failures_are_retried(rsa_key):
    responses.post(TOKEN_URL, status=503, headers={"Retry-After": "4"})
    responses.post(TOKEN_URL, status=502)
    responses.post(TOKEN_URL, json=token_response())
    slept: list[float] = []
    auth = BackendServicesAuth(TOKEN_URL, CLIENT_ID, rsa_key, SCOPE, sleep=slept.append)
    auth.authorize()
    assert slept == [4.0, 2.0]
    jtis = {
        json.loads(base64.urlsafe_b64decode(form(c)["client_assertion"].split(".")[1] + "==="))["jti"]
        for c in responses.calls
    }
    assert len(jtis) == 3  # every retry signs a new assertion


@responses.activate
def test_token_endpoint_down_gives_auth_error(rsa_key):
    responses.post(TOKEN_URL, status=500, body="oops")
    auth = BackendServicesAuth(
        TOKEN_URL, CLIENT_ID, rsa_key, SCOPE, sleep=lambda s: None, policy=RetryPolicy(max_attempts=2)
    )
    with pytest.raises(AuthError, match="HTTP 500"):
        auth.authorize()
    assert len(responses.calls) == 2


# --------------------------------------------------------------------------------------------------
# Static auths and the factory
# --------------------------------------------------------------------------------------------------


def test_bearer_and_none():
    headers: dict[str, str] = {}
    NoAuth().apply(headers)
    assert headers == {} and NoAuth().refresh() is False
    bearer = BearerAuth(" xyzzy-42 \n", scope="system/*.read")
    bearer.apply(headers)
    assert headers == {"Authorization": "Bearer xyzzy-42"}
    assert bearer.refresh("Bearer xyzzy-42") is False  # a static token cannot be renewed
    assert "xyzzy" not in repr(bearer)
    assert bearer.missing_scopes("system/Patient.rs") == set()
    assert BearerAuth("tok").missing_scopes("system/ChargeItem.c") == set()  # unknown grant: cannot tell
    with pytest.raises(AuthError):
        BearerAuth("  ")


def test_create_auth_reads_secrets_from_files_and_env(tmp_path, rsa_key):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    headers: dict[str, str] = {}
    create_auth("bearer", token_file=token_file).apply(headers)
    assert headers["Authorization"] == "Bearer from-file"
    create_auth("bearer", environ={ENV_BEARER_TOKEN: "from-env"}).apply(headers)
    assert headers["Authorization"] == "Bearer from-env"

    assert isinstance(create_auth("none"), NoAuth)
    secret = create_auth(
        "client-secret", token_endpoint=TOKEN_URL, client_id=CLIENT_ID, environ={ENV_CLIENT_SECRET: "s"}
    )
    assert isinstance(secret, ClientSecretAuth)

    key_file = tmp_path / "key.pem"
    key_file.write_text(rsa_key.as_pem(private=True).decode())
    backend = create_auth(
        "backend", token_endpoint=TOKEN_URL, client_id=CLIENT_ID, key_file=key_file, scope=SCOPE
    )
    assert isinstance(backend, BackendServicesAuth) and backend.alg == "RS384"
    from_env = create_auth(
        "backend",
        token_endpoint=TOKEN_URL,
        client_id=CLIENT_ID,
        environ={ENV_PRIVATE_KEY: json.dumps(rsa_key.as_dict(private=True))},
    )
    assert isinstance(from_env, BackendServicesAuth) and from_env.kid == "rsa-1"


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("bearer", {}, ENV_BEARER_TOKEN),
        ("client-secret", {"client_id": CLIENT_ID}, "token endpoint"),
        ("client-secret", {"token_endpoint": TOKEN_URL}, "client id"),
        ("client-secret", {"token_endpoint": TOKEN_URL, "client_id": CLIENT_ID}, ENV_CLIENT_SECRET),
        ("backend", {"token_endpoint": TOKEN_URL, "client_id": CLIENT_ID}, ENV_PRIVATE_KEY),
        (
            "backend",
            {"token_endpoint": TOKEN_URL, "client_id": CLIENT_ID, "key_file": "/nonexistent/key"},
            "cannot read the private key file",
        ),
        ("kerberos", {}, "unknown auth kind"),
    ],
)
def test_create_auth_names_what_is_missing(kind, kwargs, message):
    with pytest.raises(AuthError, match=message) as info:
        create_auth(kind, environ={}, **kwargs)
    assert info.value.exit_code == ExitCode.AUTH_ERROR


# --------------------------------------------------------------------------------------------------
# Keys and the published JWKS
# --------------------------------------------------------------------------------------------------


def test_load_keys_from_pem_jwk_and_jwks(tmp_path, rsa_key, ec_key):
    assert load_private_key(rsa_key.as_pem(private=True)).key_type == "RSA"
    ec = load_private_key(ec_key.as_pem(private=True).decode(), kid="given")
    assert ec.key_type == "EC" and ec.kid == "given"
    assert load_private_key(json.dumps(ec_key.as_dict(private=True))).kid == "ec-1"
    jwks = json.dumps(KeySet([rsa_key, ec_key]).as_dict(private=True))
    assert load_private_key(jwks, kid="ec-1").key_type == "EC"
    path = tmp_path / "jwks.json"
    path.write_text(jwks)
    assert load_private_key_file(path, kid="rsa-1").key_type == "RSA"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r, e: json.dumps(KeySet([r, e]).as_dict(private=True)), "pass the kid"),
        (lambda r, e: json.dumps(KeySet([r, e]).as_dict(private=True)), "kid 'nope'"),
        (lambda r, e: json.dumps(r.as_dict(private=False)), "public key"),
        (lambda r, e: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "cannot read"),
        (lambda r, e: "ssh-rsa AAAAB3Nza", "neither PEM nor JWK"),
        (lambda r, e: json.dumps({"kty": "oct", "k": "c2VjcmV0"}), "unsupported key type"),
    ],
    ids=["jwks-ambiguous", "jwks-unknown-kid", "public-jwk", "bad-pem", "ssh-key", "oct-key"],
)
def test_unusable_keys_are_named_without_echoing_them(rsa_key, ec_key, make, message):
    kid = "nope" if "kid 'nope'" in message else None
    data = make(rsa_key, ec_key)
    with pytest.raises(AuthError, match=message) as info:
        load_private_key(data, kid=kid)
    assert "AAAA" not in str(info.value)


@pytest.mark.parametrize(("key_fixture", "alg"), [("rsa_key", "RS384"), ("ec_key", "ES384")])
@responses.activate
def test_published_jwks_verifies_our_assertions(request, key_fixture, alg):
    key = request.getfixturevalue(key_fixture)
    jwks = publish_jwks(key)
    (public,) = jwks["keys"]
    assert "d" not in public and public["alg"] == alg and public["use"] == "sig" and public["kid"] == key.kid
    responses.post(TOKEN_URL, json=token_response())
    BackendServicesAuth(TOKEN_URL, CLIENT_ID, key, SCOPE).authorize()
    assertion = form(responses.calls[0])["client_assertion"]
    # The EHR's view: pick the key by kid from the JWKS we registered.
    token = jwt.decode(assertion, KeySet.import_key_set(jwks), algorithms=[alg])  # type: ignore[arg-type]
    assert token.claims["sub"] == CLIENT_ID


def test_key_id_falls_back_to_the_thumbprint():
    key = RSAKey.generate_key(2048)
    assert key_id(key) == key.thumbprint()
    assert publish_jwks(key)["keys"][0]["kid"] == key.thumbprint()


# --------------------------------------------------------------------------------------------------
# Scope syntax
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "wanted", "syntax", "expected"),
    [
        ("system", {"Observation": "rs"}, "v2", "system/Observation.rs"),
        ("system", {"Observation": "sr"}, "v2", "system/Observation.rs"),  # canonical letter order
        ("system", {"ChargeItem": "cud", "Patient": "r"}, "v2", "system/ChargeItem.cud system/Patient.r"),
        ("patient", {"*": "cruds"}, "v2", "patient/*.cruds"),
        ("system", {"Observation": "rs"}, "v1", "system/Observation.read"),
        ("system", {"Observation": "r"}, "v1", "system/Observation.read"),
        ("system", {"ChargeItem": "c"}, "v1", "system/ChargeItem.write"),
        (
            "user",
            {"DocumentReference": "rsc"},
            "v1",
            "user/DocumentReference.read user/DocumentReference.write",
        ),
    ],
)
def test_format_scopes(context, wanted, syntax, expected):
    assert format_scopes(context, wanted, syntax) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("group", {"Patient": "r"}, "v2"), "context"),
        (("system", {"Patient": "rx"}, "v2"), "cruds"),
        (("system", {"Patient": ""}, "v2"), "cruds"),
        (("system", {"patient": "r"}, "v2"), "resource type"),
        (("system", {"Patient": "r"}, "v3"), "syntax"),
    ],
)
def test_format_scopes_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        format_scopes(*args)


@pytest.mark.parametrize(
    ("granted", "expected"),
    [
        ("system/Observation.read", {Grant("system", "Observation", frozenset("rs"))}),
        ("system/Observation.write", {Grant("system", "Observation", frozenset("cud"))}),
        ("system/*.*", {Grant("system", "*", frozenset("cruds"))}),
        ("patient/Observation.rs", {Grant("patient", "Observation", frozenset("rs"))}),
        ("user/ChargeItem.cu", {Grant("user", "ChargeItem", frozenset("cu"))}),
        (
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
            {
                Grant(
                    "patient",
                    "Observation",
                    frozenset("rs"),
                    "category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
                )
            },
        ),
        ("openid fhirUser launch/patient offline_access", set()),
        ("system/Observation.xyz patient/observation.read  ", set()),
        ("", set()),
    ],
)
def test_parse_granted_accepts_both_spellings(granted, expected):
    assert parse_granted(granted) == expected


@pytest.mark.parametrize(
    ("required", "granted", "gaps"),
    [
        ("system/Observation.rs", "system/Observation.read", set()),
        ("system/Observation.rs", "system/*.read", set()),
        ("system/ChargeItem.c", "system/*.read", {"system/ChargeItem.c"}),
        ("system/ChargeItem.cu", "system/ChargeItem.c", {"system/ChargeItem.u"}),
        ("system/ChargeItem.cru", "system/ChargeItem.r system/ChargeItem.cu", set()),  # letters add up
        ("system/Observation.rs", "patient/Observation.rs", {"system/Observation.rs"}),  # other context
        ("system/Observation.rs", "system/Observation.rs?category=laboratory", {"system/Observation.rs"}),
        ("system/ChargeItem.write", "system/ChargeItem.cud", set()),
        ("system/ChargeItem.write", "", {"system/ChargeItem.cud"}),
    ],
)
def test_missing(required, granted, gaps):
    assert {g.spell() for g in missing(required, granted)} == gaps


def test_grant_spells_v1_and_missing_accepts_grants():
    gap = Grant("system", "ChargeItem", frozenset("cr"))
    assert gap.spell("v1") == "system/ChargeItem.read system/ChargeItem.write"
    assert missing([gap], ["system/ChargeItem.read"]) == {Grant("system", "ChargeItem", frozenset("c"))}
    with pytest.raises(TypeError):
        missing([42], "")  # type: ignore[arg-type]
