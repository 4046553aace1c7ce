"""Issue 4: a key rotation starts signing with a new key while the old public key
stays in the JWKS, so tokens issued before the rotation keep working until they
expire; only the admin may rotate."""
from conftest import assert_problem, jwks_keys, verify_token


def anonymous(srv):
    r = srv.post("/v1/sessions/anonymous")
    assert r.status_code == 201, r.text
    return r.json()["access_token"]


def register(srv, token, email):
    r = srv.post("/v1/registrations", headers={"Authorization": f"Bearer {token}"},
                 json={"type": "local", "email": email, "password": "0123456789ab", "name": "K"})
    assert r.status_code == 202, r.text
    return r.json()


def test_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(start_iotfin):
    srv = start_iotfin(env={"IOTFIN_AUTH_RATE": "10000"})
    # Step 1: before the rotation, one key signs; an app holds a token and a registration.
    before = jwks_keys(srv)
    assert len(before) == 1, before
    old_anon = anonymous(srv)
    old_header, _ = verify_token(srv, old_anon)
    reg = register(srv, old_anon, "before@example.com")

    # Step 2: rotate as admin; the answer names the new key.
    r = srv.post("/v1/admin/keys/rotate", headers=srv.admin_headers())
    assert r.status_code == 201, r.text
    new_kid = r.json()["kid"]
    assert new_kid != old_header["kid"]

    # Step 3: the JWKS now has both keys: old tokens still verify for third parties.
    after = jwks_keys(srv)
    assert set(after) == {old_header["kid"], new_kid}, after
    verify_token(srv, old_anon)

    # Step 4: new tokens carry the new kid and verify against the JWKS.
    new_anon = anonymous(srv)
    header, claims = verify_token(srv, new_anon)
    assert header["kid"] == new_kid and claims["tier"] == "anonymous"

    # Step 5: tokens from before the rotation are still accepted by iotfin itself.
    rid = reg["registration"]["id"]
    g = srv.get(f"/v1/registrations/{rid}",
                headers={"Authorization": f"Bearer {reg['access_token']}"})
    assert g.status_code == 200, g.text
    register(srv, old_anon, "after@example.com")

    # Step 6: a restart keeps both keys and keeps signing with the newest.
    data_dir = srv.data_dir
    assert srv.stop() == 0
    again = start_iotfin(data_dir=data_dir, env={"IOTFIN_AUTH_RATE": "10000"})
    assert set(jwks_keys(again)) == {old_header["kid"], new_kid}
    header, _ = verify_token(again, anonymous(again))
    assert header["kid"] == new_kid


def test_only_the_admin_rotates_keys(iotfin):
    r = iotfin.post("/v1/admin/keys/rotate")
    assert_problem(r, 401, "unauthenticated")
    r = iotfin.post("/v1/admin/keys/rotate",
                    headers={"Authorization": f"Bearer {anonymous(iotfin)}"})
    assert_problem(r, 403, "forbidden")
    assert len(jwks_keys(iotfin)) == 1
