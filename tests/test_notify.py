"""ntfy notifications against a stub ntfy server (only the failures need a stub)."""

import asyncio

import aiohttp
from aiohttp import web

from support.httppeer import serving
from support.pgserver import free_port
from xrayvision.notify import Notice, Notifier


async def test_notice_is_retried_and_carries_no_patient_name_by_default():
    received, answers = [], [500, 200]

    async def topic(request):
        received.append((dict(request.headers), await request.text()))
        return web.Response(status=answers.pop(0))

    app = web.Application()
    app.router.add_post("/xray", topic)
    async with serving(app) as url, aiohttp.ClientSession() as session:
        notifier = Notifier(session, url, "xray", backoff=0.01)
        notifier.send(Notice(uid="1.2.3", region="chest", severity=8,
                             summary="tension pneumothorax", link="http://dash/#/exam/1.2.3"))
        await asyncio.wait_for(notifier.drain(), 5)
    assert len(received) == 2
    headers, body = received[-1]
    assert headers["Title"] == "X-ray severity 8: chest" and headers["Priority"] == "urgent"
    assert headers["Click"] == "http://dash/#/exam/1.2.3"
    assert body == "tension pneumothorax\nExam: 1.2.3"


async def test_unreachable_ntfy_never_raises():
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(session, f"http://127.0.0.1:{free_port()}", "x", attempts=2,
                            backoff=0.01)
        notifier.send(Notice("1.2", "hand", 9, "s", "l", patient_name="Popescu Ion"))
        await asyncio.wait_for(notifier.drain(), 5)


def test_patient_name_only_when_given():
    assert "Patient:" not in Notice("1", "chest", 7, "x", "l").body()
    assert Notice("1", "chest", 7, "x", "l", "Ana").body().startswith("Patient: Ana")
