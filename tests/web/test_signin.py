"""The dashboard's sign-in: a cookie (HttpOnly, SameSite=Strict) from user name and
password, a CSRF token on every change made with it, sign-out, the idle timeout; the
dashboard's own requests get no Basic challenge (no browser password dialog)."""

import datetime as dt

from sqlalchemy import update

from web.conftest import PASSWORDS, basic
from xrayvision.db.models import AuditLog, WebSession, utcnow

PAGE = {"X-Requested-With": "XRayVision"}


async def sign_in(client, user="rad", password=None):
    return await client.post("/api/session", json={
        "username": user, "password": PASSWORDS[user] if password is None else password},
        headers=PAGE)


async def test_sign_in_sets_a_strict_http_only_cookie_and_answers_the_csrf_token(api):
    client, services = api
    nobody = await client.get("/api/session", headers=PAGE)  # asked first, no 401
    assert nobody.status == 200 and (await nobody.json())["user"] is None
    resp = await sign_in(client)
    assert resp.status == 200
    body = await resp.json()
    assert (body["user"], body["role"]) == ("rad", "radiologist") and body["csrf"]
    cookie = resp.headers["Set-Cookie"]
    assert "xrv_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS (or a trusted proxy's) it is
    # the cookie alone reads; /api/config gives the page its CSRF token again
    config = await (await client.get("/api/config", headers=PAGE)).json()
    assert (config["user"], config["csrf"]) == ("rad", body["csrf"])
    who = await (await client.get("/api/session", headers=PAGE)).json()
    assert who == {"user": "rad", "role": "radiologist", "csrf": body["csrf"]}
    stored = services.db.read_sync(lambda s: s.query(WebSession).one())
    token = resp.cookies["xrv_session"].value
    assert token not in (stored.token_hash, stored.csrf)  # only its hash is kept


async def test_changes_with_the_cookie_need_the_csrf_token(api):
    client, _ = api
    csrf = (await (await sign_in(client)).json())["csrf"]
    change = {"uid": "1.2.3.9", "correct": True, "note": ""}
    refused = await client.post("/api/rad_review", json=change, headers=PAGE)
    assert refused.status == 403 and (await refused.json())["error"] == "csrf"
    wrong = await client.post("/api/rad_review", json=change,
                              headers={**PAGE, "X-CSRF-Token": "guess"})
    assert wrong.status == 403
    allowed = await client.post("/api/rad_review", json=change,
                                headers={**PAGE, "X-CSRF-Token": csrf})
    assert allowed.status == 404  # past the checks: no such exam


async def test_wrong_password_is_a_401_without_a_browser_dialog_and_can_be_retried(api):
    client, services = api
    wrong = await sign_in(client, password="nope")
    assert wrong.status == 401 and "WWW-Authenticate" not in wrong.headers
    assert (await wrong.json())["detail"] == "wrong username or password"
    assert "xrv_session" not in wrong.cookies
    assert (await sign_in(client)).status == 200
    actions = services.db.read_sync(lambda s: [a.action for a in s.query(AuditLog)])
    assert "login.failed" in actions and "login" in actions
    # without any credentials: the page gets no challenge, an API client does
    client.session.cookie_jar.clear()
    page = await client.get("/api/exams", headers=PAGE)
    assert page.status == 401 and "WWW-Authenticate" not in page.headers
    api_client = await client.get("/api/exams")
    assert api_client.status == 401 and api_client.headers["WWW-Authenticate"].startswith("Basic")


async def test_sign_out_ends_the_sign_in(api):
    client, services = api
    csrf = (await (await sign_in(client)).json())["csrf"]
    assert (await client.delete("/api/session", headers=PAGE)).status == 403  # no CSRF
    out = await client.delete("/api/session", headers={**PAGE, "X-CSRF-Token": csrf})
    assert out.status == 200
    assert services.db.read_sync(lambda s: s.query(WebSession).count()) == 0
    assert (await client.get("/api/exams", headers=PAGE)).status == 401
    assert "logout" in services.db.read_sync(lambda s: [a.action for a in s.query(AuditLog)])


async def test_a_sign_in_unused_for_the_idle_time_ends(api):
    client, services = api
    await sign_in(client)
    assert (await client.get("/api/exams", headers=PAGE)).status == 200
    services.db.write_sync(lambda s: s.execute(update(WebSession).values(
        last_seen=utcnow() - dt.timedelta(seconds=1801))))  # [web] session_idle 1800
    gone = await client.get("/api/exams", headers=PAGE)
    assert gone.status == 401 and "sign in again" in (await gone.json())["detail"]
    assert services.db.read_sync(lambda s: s.query(WebSession).count()) == 0


async def test_basic_still_works_for_api_clients(api):
    client, _ = api
    assert (await client.get("/api/exams", headers=basic("viewer"))).status == 200
    bad = await client.post("/api/session", json={"username": ""}, headers=PAGE)
    assert bad.status == 400
