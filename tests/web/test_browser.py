"""The dashboard in headless Chromium (Debian's, driven by Playwright), against a real web
process on PostgreSQL, read per study (the default): the list shows studies; another
process records and converts an instance and publishes it, as ingest does. Screenshots go
to build/screenshots/ (test artefacts)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import data_store
import numpy as np
import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import update

from conftest import ROOT
from support import records
from support.webproc import web_process
from web.conftest import PASSWORDS, USERS
from xrayvision.db import queue, repo
from xrayvision.db.models import IGNORE, Exam
from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.dicom.convert import convert_file
from xrayvision.fhir.health import HEALTH_KEY, FhirHealth
from xrayvision.images import FilesystemStore

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
XSS = "<img src=x onerror=alert(1)>"
SHOTS = ROOT / "build" / "screenshots"
# pydicom-data's two real CR radiographs (MONOCHROME1, 15 and 10 bits), as we render them
CORPUS = Path(data_store.__file__).parent / "data"
RADIOGRAPHS = {"1.2.840.1": "RG1_UNCR.dcm", "1.2.840.4": "RG3_UNCR.dcm"}

PUBLISH = """
import asyncio, json, sys
from xrayvision.events import make_bus

async def main(url, kind, data):
    bus = make_bus(url.replace("postgresql://", "postgresql+psycopg://"))
    await bus.start()
    await bus.publish(kind, **json.loads(data))
    await bus.close()

asyncio.run(main(*sys.argv[1:]))
"""
HIS_WARNING = ("no Patient on the FHIR server has an identifier in system urn:ro:cnp: "
               "[fhir] identifier_system is probably not your HIS's")
VIEWER = "https://viewer.example/ohif?StudyInstanceUIDs={study_uid}&image={uid}"
INSERT = """
import asyncio, sys
from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.db import repo
from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.dicom.convert import convert_file
from xrayvision.fhir.health import HEALTH_KEY, FhirHealth
from xrayvision.images import FilesystemStore
from xrayvision.events import make_bus

async def main(url, uid):
    db = Database(DatabaseOptions(url=url))
    bus = make_bus(db.url)
    await bus.start()
    def record(session):
        repo.insert_received(session, ExamInfo(uid=uid, region="chest"),
                             PatientInfo(cnp="333", name="Nou^Pacient"))
        repo.finish_conversion(session, uid, "queued")
        repo.refresh_study(session, "", uid, became_readable=True, read_per_study=True,
                           quiet=10, threshold=5)
    await db.write(record)
    await bus.publish("exam.queued", uid=uid, region="chest")
    await bus.close()
    db.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def shoot(page, name: str) -> None:
    """Screenshots of the page as it is, at 1440x900 and at 768 px wide (a tablet, a
    narrow window), the whole page each time."""
    size = page.viewport_size
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 768, "height": 1024})
    page.screenshot(path=str(SHOTS / f"{name}-768.png"), full_page=True)
    page.set_viewport_size(size)


def sign_in(page, user: str) -> None:
    """Through the sign-in page, as a user does (the cookie then signs in every request)."""
    page.wait_for_selector("#signin")
    page.fill("#signin input[name=username]", user)
    page.fill("#signin input[name=password]", PASSWORDS[user])
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#signin", state="detached")


def windowed(values: np.ndarray, level: int, width: int, invert: bool = False) -> np.ndarray:
    """Grey values through a window, by DICOM's linear VOI function (PS3.3 C.11.2.1.2.1)."""
    linear = ((values - (level - 0.5)) / (width - 1) + 0.5) * 255
    out = np.clip(np.floor(linear + 0.5), 0, 255)
    return 255 - out if invert else out


def wait_window(page, window: str) -> None:
    """Until the viewer has drawn the image through ``window`` ("level/width[/inverted]")."""
    page.wait_for_function("w => document.getElementById('xray').dataset.window === w",
                           arg=window)


def check_window_level(page, images) -> None:
    """The viewer's window presets, sliders and invert change the grey values drawn
    exactly as a window/level maps the rendered image's values."""
    png = cv2.imread(str(FilesystemStore(images).path("1.2.840.1", "png")), cv2.IMREAD_UNCHANGED)
    height, width = png.shape
    points = [(width * i // 7, height * j // 5) for i in range(1, 7) for j in range(1, 5)]
    source = np.array([png[y, x] for x, y in points], dtype=float)
    assert len(set(source)) > 5  # a real image: many grey values under the points
    read = f"""() => {{ const c = document.getElementById('xray').getContext('2d');
        return {json.dumps(points)}.map(([x, y]) => c.getImageData(x, y, 1, 1).data[0]); }}"""
    assert page.evaluate(read) == windowed(source, 128, 256).tolist()  # full range: as is
    page.select_option("#wl-preset", label="Dense (bone)")
    wait_window(page, "170/128")
    assert page.evaluate(read) == windowed(source, 170, 128).tolist()
    assert page.inner_text("#wl-value") == "L 170 W 128"
    page.fill("#wl-level", "90")  # a slider by hand: the preset says "Custom"
    page.check("#wl-invert")
    wait_window(page, "90/128/inverted")
    assert page.evaluate(read) == windowed(source, 90, 128, invert=True).tolist()
    assert page.eval_on_selector("#wl-preset", "s => s.selectedOptions[0].text") == "Custom"
    # right-drag widens the window (left/right) as in PACS viewers
    box = page.locator("#image-box").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    page.mouse.move(x + 60, y, steps=3)
    page.mouse.up(button="right")
    wait_window(page, "90/188/inverted")
    page.click("#reset")
    wait_window(page, "128/256")
    assert page.evaluate(read) == windowed(source, 128, 256).tolist()


def study_read(db, text: str, severity: int, **fields) -> None:
    """A read of study 1.2.840 as the relay stores it (claimed, stored, completed)."""
    def read(session):
        assert queue.claim(session, "relay", 60, table=queue.STUDIES).uid == "1.2.840"
        repo.save_study_read(session, "1.2.840", ["1.2.840.1", "1.2.840.4"], threshold=5,
                             text=text, severity=severity, model="medgemma", **fields)
        queue.complete(session, "1.2.840", "relay", table=queue.STUDIES)
    db.write_sync(read)


def new_read(db, db_url: str, text: str) -> None:
    """What a relay does for a requeued study (requeue, store, event), by hand: the
    event from another process, as in production."""
    assert db.write_sync(repo.requeue_study, "1.2.840")
    study_read(db, text, 6, endpoint="primary")
    subprocess.run([sys.executable, "-c", PUBLISH, db_url, "report.ready", json.dumps(
        {"uid": "1.2.840", "images": ["1.2.840.1", "1.2.840.4"], "severity": 6})],
        check=True)


REFUSED = ("PACS@pacs.invalid:104 accepts none of Comprehensive 3D SR Storage (SOP class "
           "not supported)")


@pytest.fixture
def dashboard(tmp_path, pg_db, pg_url):
    for uid, name in RADIOGRAPHS.items():  # every converted image has its PNG
        png = convert_file(str(CORPUS / name)).png
        FilesystemStore(tmp_path / "data" / "images").put(uid, "png", png)
    for uid, view in (("1.2.840.1", "PA"), ("1.2.840.4", "LAT")):
        pg_db.write_sync(records.add_converted, ExamInfo(uid=uid, region="chest",
                                                         study_uid="1.2.840", projection=view),
                         PatientInfo(cnp="111", name="Popescu^Ion"))
    study_read(pg_db, f"FINDINGS: {XSS}", 7, summary=XSS, confidence=80, endpoint="primary")
    # its SR refused by the PACS (the relay's sender, another process, gave up on it)
    pg_db.write_sync(repo.enqueue_results, "1.2.840", ("dicom",))
    [result] = pg_db.write_sync(repo.claim_results, "relay", limit=1, lease_seconds=60)
    pg_db.write_sync(repo.result_failed, result.id, "relay", REFUSED, attempts=1,
                     max_attempts=10, base_delay=30, permanent=True)
    # an image no region rule covers: converted (it has its PNG) but not read
    FilesystemStore(tmp_path / "data" / "images").put(
        "1.2.840.3", "png", convert_file(str(CORPUS / "RG3_UNCR.dcm")).png)
    pg_db.write_sync(records.add_converted, ExamInfo(uid="1.2.840.3", status=IGNORE,
                                                     body_part="NECK"), None)
    pg_db.write_sync(lambda s: s.execute(update(Exam).where(Exam.uid == "1.2.840.3").values(
        error="no region rule matches body part 'NECK'", reason_code="no_region_rule")))
    users = {name: f"{u.role}:{u.password_hash}" for name, u in USERS.items()}
    # the HIS as the poller (another process) last found it: a wrong identifier system
    pg_db.write_sync(repo.set_state, HEALTH_KEY, FhirHealth(warning=HIS_WARNING).to_json())
    with web_process(tmp_path, pg_url, users, XRAYVISION_WEB_VIEWER_URL=VIEWER,
                     XRAYVISION_FHIR_URL="http://his.invalid/fhir",
                     XRAYVISION_RESULTS_DICOM_DESTINATION="PACS@pacs.invalid:104") as url:
        yield url


def test_dashboard_live_updates_xss_and_review(dashboard, pg_db, pg_url, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    errors, dialogs = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(dashboard + "/")
        sign_in(page, "rad")
        page.wait_for_selector('tr[data-uid="1.2.840"]')  # the study
        page.wait_for_selector("#live.on")
        row = page.inner_text('tr[data-uid="1.2.840"]')
        assert XSS in row and "PA, LAT (2 images)" in row
        # severity 7 at threshold 5, not reviewed: marked, and first in the urgent order
        assert page.get_attribute('tr[data-uid="1.2.840"]', "class") == "critical"
        # ... by a written marker and a written-out severity, not by colour alone
        assert "⚠ critical" in row and "⚠ 7/10" in row
        first = page.locator("#exam-rows tr").first.get_attribute("data-uid")
        assert first == "1.2.840"
        assert "studies" in page.inner_text("#page-info")
        assert "not read: no region rule" in page.inner_text('tr[data-uid="1.2.840.3"]')
        shoot(page, "exams")

        # a relay (another process) finds the primary alive but wrong: the header says so
        wrong = "normal chest: severity 9, expected 0-3, positive 1, expected 0"
        subprocess.run([sys.executable, "-c", PUBLISH, pg_url, "endpoint.health", json.dumps({
            "primary": {"healthy": True, "error": "", "error_at": "", "probe": "failing",
                        "probe_reason": wrong, "probe_at": "2026-12-03T09:00:00+00:00"},
            "secondary": {"healthy": True, "error": "", "error_at": "", "probe": "passing",
                          "probe_reason": "", "probe_at": "2026-12-03T09:00:00+00:00"}})],
            check=True)
        page.wait_for_selector("#endpoints .pill.off:has-text('primary degraded')")
        assert "failover: secondary active" in page.inner_text("#endpoints")
        assert wrong in page.get_attribute("#endpoints .pill.off", "title")
        shoot(page, "exams-degraded")
        fixed = {name: {"healthy": True, "error": "", "error_at": "", "probe": "passing",
                        "probe_reason": "", "probe_at": "2026-12-03T09:01:00+00:00"}
                 for name in ("primary", "secondary")}
        subprocess.run([sys.executable, "-c", PUBLISH, pg_url, "endpoint.health",
                        json.dumps(fixed)], check=True)
        page.wait_for_selector("#endpoints .pill.on:has-text('primary up')")
        assert "failover" not in page.inner_text("#endpoints")

        started = time.monotonic()
        subprocess.run([sys.executable, "-c", INSERT, pg_url, "1.2.840.2"], check=True)
        inserted = time.monotonic()
        page.wait_for_selector('tr[data-uid="1.2.840.2"]', timeout=2000)
        shown = time.monotonic()
        assert shown - inserted <= 2.0, (
            f"took {shown - inserted:.2f} s (insert {inserted - started:.2f} s)")

        # keyboard only: to the first row, down to the next and back, Enter opens it
        page.focus('tr[data-uid="1.2.840"]')
        page.keyboard.press("ArrowDown")
        second = page.locator("#exam-rows tr").nth(1).get_attribute("data-uid")
        assert page.evaluate("document.activeElement.dataset.uid") == second != "1.2.840"
        page.keyboard.press("ArrowUp")
        assert page.evaluate("document.activeElement.dataset.uid") == "1.2.840"
        page.keyboard.press("Enter")  # its first image's page
        page.wait_for_selector("#ai-text")
        page.wait_for_function("document.getElementById('ai-text').textContent.length > 0")
        assert page.inner_text("#ai-text") == f"FINDINGS: {XSS}"
        assert "read of the study (2 images)" in page.inner_text("#ai-version")
        # the study's other image is one click away
        assert "study: 2 images" in page.inner_text("#study-images")
        assert page.locator('#study-images a[href="#/exam/1.2.840.4"]').count() == 1
        assert page.locator("#study-images img.thumb").count() == 2  # a thumbnail each
        assert page.locator("#ai-text img").count() == 0
        page.wait_for_function("() => document.getElementById('xray').dataset.loaded === 'true'")
        shoot(page, "exam")
        check_window_level(page, tmp_path / "data" / "images")

        page.check('#review input[value="false"]')
        page.fill("#review textarea", "missed effusion")
        page.click("#review button[type=submit]")
        page.wait_for_selector("#review-result:has-text('saved')")
        page.wait_for_selector("#review-state:has-text('incorrect')")

        # A new read arrives while a review is being written: the page says so.
        page.fill("#review textarea", "half-written")
        # (the relay's requeue, store and event, by hand)
        new_read(pg_db, pg_url, "FINDINGS: a read while writing")
        page.wait_for_selector("#review-result:has-text('A new AI read (version 2)')")
        page.wait_for_selector("#ai-text:has-text('a read while writing')")
        # the hospital system's trouble, said in the header and where its report would be
        assert "HIS problem" in page.inner_text("#endpoints")
        assert HIS_WARNING in page.get_attribute("#endpoints .pill.off", "title")
        assert "hospital system is not answering as it should: no Patient" in page.inner_text(
            "#rad-text")
        page.fill("#review textarea", "")

        # Requeue, a new read arrives: the first one and its review stay, under history.
        page.click("#requeue")  # asks first
        page.click("#requeue-no")
        assert page.inner_text("#requeue-result") == "" and page.is_hidden("#requeue-ask")
        page.click("#requeue")  # and while the user decides, a new read arrives: said
        new_read(pg_db, pg_url, "FINDINGS: a read while deciding")
        page.wait_for_selector("#requeue-result:has-text('changed while you were deciding')")
        assert "AI read version 3" in page.inner_text("#requeue-result")
        page.click("#requeue-yes")
        page.wait_for_selector("#requeue-result:has-text('requeued')")
        study_read(pg_db, "FINDINGS: second read", 3, endpoint="secondary")
        page.reload()
        page.wait_for_selector("#ai-version:has-text('version 4')")
        page.click("#history summary")
        history = page.inner_text("#history")
        assert "version 1 · severity 7" in history and "reviewed incorrect by rad" in history
        assert "missed effusion" in history and XSS in history
        assert page.locator("#history img").count() == 0
        shoot(page, "exam-history")

        # the study in the hospital's viewer, from the settable address
        assert page.get_attribute("#viewer", "href") == (
            "https://viewer.example/ohif?StudyInstanceUIDs=1.2.840&image=1.2.840.1")
        # the study's context, and back to the list as it was
        context = page.inner_text("#exam-context")
        assert "Priority" in context and "routine" in context and "Received" in context
        page.click("#back")
        page.wait_for_selector('tr[data-uid="1.2.840"]')

        # filters, order and page size live in the address: a reload keeps them
        page.select_option("#filters select[name=status]", "ignore")
        page.select_option("#filters select[name=size]", "25")
        page.click("#filters button[type=submit]")
        page.wait_for_function("location.hash.includes('status=ignore')")
        assert "size=25" in page.evaluate("location.hash")
        page.wait_for_selector('tr[data-uid="1.2.840"]', state="detached")
        page.reload()
        page.wait_for_selector('tr[data-uid="1.2.840.3"]')
        assert page.locator("#exam-rows tr").count() == 1
        assert page.input_value("#filters select[name=status]") == "ignore"
        assert page.input_value("#filters select[name=size]") == "25"
        page.go_back()  # the unfiltered list again
        page.wait_for_selector('tr[data-uid="1.2.840"]')
        # a column header orders by it; a date range filters by receipt
        page.click('th[data-sort="received"] button')
        page.wait_for_function("location.hash.includes('sort=received')")
        page.wait_for_selector('th[data-sort="received"][aria-sort="descending"]')
        assert page.input_value("#filters select[name=sort]") == "received"
        page.fill("#filters input[name=since]", "2099-01-01")
        page.click("#filters button[type=submit]")
        page.wait_for_selector("td.empty:has-text('match these filters')")
        day = "new Date(Date.now() + %d * 864e5).toISOString().slice(0, 10)"
        page.fill("#filters input[name=since]", page.evaluate(day % -1))
        page.fill("#filters input[name=until]", page.evaluate(day % 0))  # through today
        page.click("#filters button[type=submit]")
        page.wait_for_selector('tr[data-uid="1.2.840"]')

        # the HIS amended, then withdrew, the lateral's report: the page says so and
        # keeps both versions in its history
        for version, text in (("1", "Fractură costală"), ("2", "Fractură costală; addendum")):
            pg_db.write_sync(repo.save_rad_report, "1.2.840.4", fhir_id="r9",
                             fhir_version=version, fhir_status="final" if version == "1"
                             else "amended", text=text, radiologist="Dr. Pop", severity=6,
                             checked=True)
        pg_db.write_sync(repo.withdraw_rad_reports, "r9", "entered-in-error")
        page.goto(dashboard + "/#/exam/1.2.840.4")
        page.wait_for_selector("#rad-text:has-text('withdrew')")
        assert "withdrew the radiologist's report (entered-in-error)" in page.inner_text(
            "#rad-text")
        page.click("#rad-history summary")
        history = page.inner_text("#rad-history")
        assert "final · Dr. Pop" in history and "replaced by a later version" in history
        assert "amended · Dr. Pop" in history and "entered in error" in history
        assert "Fractură costală; addendum" in history
        shoot(page, "exam-withdrawn")
        # an image the AI did not read: why, and what to do, in words
        page.goto(dashboard + "/#/exam/1.2.840.3")
        page.wait_for_selector("#exam-reason:visible")
        assert page.inner_text("#exam-reason") == (
            "Not sent to the AI: no region rule matches body part 'NECK'. To have it read, "
            "choose its region under \u201cRead as\u201d and requeue it.")
        assert page.get_attribute("#exam-reason", "title") == "ignore: no_region_rule"
        assert page.inner_text("#ai-text") == "The AI does not read this image (why: above)."
        assert page.eval_on_selector("#requeue-region", "s => s.options[0].text") == (
            "choose a region")
        shoot(page, "exam-ignored")

        pg_db.write_sync(repo.save_shadow_read, "1.2.840", text="FINDINGS: shadow",
                         positive=1, severity=8, confidence=80, summary="", model="mg-q4",
                         endpoint="shadow", latency=2.0, prompt_version="p")
        page.goto(dashboard + "/#/stats")
        page.wait_for_selector("#chart-severity svg")
        # axes, values and a legend with totals; the counts behind the charts
        assert "AI (1)" in page.inner_text("#chart-severity .legend")
        assert page.locator("#chart-severity text.value").count() >= 1
        assert "ignored (no region)\n1" in page.inner_text("#queue-counts")
        assert "secondary\t1" in page.inner_text("#latency")  # the current read's
        assert "medgemma\t1" in page.inner_text("#per-model")
        # the shadow model's copy (stored by a relay): compared, never the AI read
        page.wait_for_selector("#per-shadow td:has-text('mg-q4')")
        shadow_row = page.inner_text("#per-shadow tbody tr")
        # severity 8 against the live read's 3 (version 4): it disagrees; no radiologist yet
        assert shadow_row == "mg-q4\t1\t– of 0\t–\t–\t– of 0\t0.0% of 1"
        page.wait_for_selector("#chart-turnaround svg")  # receipt to first read, today
        assert "90th percentile" in page.inner_text("#chart-turnaround .legend")
        assert page.inner_text("#queue-head") == "Queue (studies)"
        assert page.inner_text("#queue").startswith("studies: waiting ")
        shoot(page, "stats")
        browser.close()
    first, *_later = pg_db.read_sync(repo.ai_history, "1.2.840.1").versions
    assert (first.review_correct, first.review_note, first.reviewed_by) == (
        0, "missed effusion", "rad")
    assert dialogs == [], "an alert ran: report text was rendered as HTML"
    assert errors == []


def test_after_a_server_restart_the_page_shows_what_it_missed(tmp_path, pg_db, pg_url):
    """The web process goes away and comes back on the same address; an image arrived
    meanwhile (its event went to nobody): once the page is live again it shows it."""
    from support.pgserver import free_port

    users = {name: f"{u.role}:{u.password_hash}" for name, u in USERS.items()}
    port = free_port()
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        with web_process(tmp_path / "first", pg_url, users, port=port) as url:
            page.goto(url + "/")
            sign_in(page, "rad")
            page.wait_for_selector("#live.on")
            # nothing received yet: the list says where to send images
            page.wait_for_selector("td.empty")
            empty = page.inner_text("#exam-rows")
            assert "No studies yet" in empty and "AE title XRAYVISION, port " in empty
            shoot(page, "exams-empty")
            page.goto(url + "/#/stats")  # and the statistics say there is nothing yet
            page.wait_for_selector("#chart-severity .empty")
            assert "No AI reads" in page.inner_text("#latency")
            assert "No shadow model" in page.inner_text("#per-shadow")
            shoot(page, "stats-empty")
            page.goto(url + "/#/exams")
            page.wait_for_selector("td.empty")
        page.wait_for_selector("#live.off")
        subprocess.run([sys.executable, "-c", INSERT, pg_url, "1.2.841.1"], check=True)
        with web_process(tmp_path / "again", pg_url, users, port=port):
            page.wait_for_selector("#live.on", timeout=30000)
            page.wait_for_selector('tr[data-uid="1.2.841.1"]', timeout=5000)
            shoot(page, "exams-after-restart")
        browser.close()
    assert errors == []


def test_the_admin_page_lists_users_and_the_audit_log(dashboard):
    """An admin sees who may sign in and what was done; other roles see no Admin."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        for user, admin in (("rad", False), ("admin", True)):
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.goto(dashboard + "/")
            sign_in(page, user)
            page.wait_for_selector("#live.on")
            assert page.is_visible('[data-nav="admin"]') is admin
            if admin:
                page.click('[data-nav="admin"]')
                page.wait_for_selector("#users td")
                assert "radiologist" in page.inner_text("#users")
                page.wait_for_selector("#audit td")
                page.fill("#audit-filters input[name=action]", "login")
                page.click("#audit-filters button[type=submit]")
                page.wait_for_function(
                    "[...document.querySelectorAll('#audit tbody tr td:nth-child(3)')]"
                    ".every((td) => td.textContent.startsWith('login'))")
                assert "admin" in page.inner_text("#audit tbody")
                assert "every report found is linked" in page.inner_text("#unlinked")
                # the SR the PACS refused: given up, with its reason, and sent again
                page.wait_for_selector("#results td")
                row = page.inner_text("#results tbody tr")
                assert "given up" in row and "SOP class not supported" in row
                assert "1 given up" in page.inner_text("#results-depth")
                shoot(page, "admin")
                page.click("#results tbody button")
                page.wait_for_function(
                    "() => document.querySelector('#results tbody tr').textContent"
                    ".includes('waiting')")
                assert "1 waiting" in page.inner_text("#results-depth")
            assert errors == []
            context.close()
        browser.close()


def test_sign_in_page_wrong_password_retry_and_sign_out(dashboard):
    """No HTTP Basic in the browser: the sign-in page (no browser dialog), a wrong
    password said on the page and tried again, the list, then signing out."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(dashboard + "/")
        page.wait_for_selector("#signin")
        assert page.is_hidden('[data-nav="stats"]')
        shoot(page, "signin")
        page.fill("#signin input[name=username]", "rad")
        page.fill("#signin input[name=password]", "not-it")
        page.click("#signin button[type=submit]")
        page.wait_for_selector("#signin-message:has-text('wrong username or password')")
        shoot(page, "signin-wrong")
        page.fill("#signin input[name=password]", PASSWORDS["rad"])
        page.click("#signin button[type=submit]")
        page.wait_for_selector('tr[data-uid="1.2.840"]')
        page.wait_for_selector("#live.on")  # the WebSocket signs in by the cookie too
        assert "rad (radiologist)" in page.inner_text("#user")
        # a change made with the cookie carries its CSRF token
        page.click('tr[data-uid="1.2.840"]')
        page.wait_for_selector("#review")
        page.check('#review input[value="true"]')
        page.click("#review button[type=submit]")
        page.wait_for_selector("#review-result:has-text('saved')")
        page.click("#signout")
        page.wait_for_selector("#signin-message:has-text('Signed out')")
        page.reload()  # the cookie is gone: the sign-in page again
        page.wait_for_selector("#signin")
        browser.close()
    assert errors == []


def serious_violations(page) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now (rule: nodes)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page).response["violations"]
    return [f"{v['id']} ({v['impact']}): {v['help']} -> "
            f"{[n['target'] for n in v['nodes']][:3]}"
            for v in results if v["impact"] in ("serious", "critical")]


def test_no_serious_accessibility_violations(dashboard):
    """axe-core (bundled by axe-playwright-python) on the sign-in page, the worklist and
    an exam's page: no serious or critical violation."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(dashboard + "/")
        page.wait_for_selector("#signin")
        found = {"sign-in": serious_violations(page)}
        sign_in(page, "rad")
        page.wait_for_selector('tr[data-uid="1.2.840"]')
        found["worklist"] = serious_violations(page)
        page.click('tr[data-uid="1.2.840"]')
        page.wait_for_selector("#ai-text:not(:empty)")
        found["exam"] = serious_violations(page)
        # (the check can fail: an image without a text alternative is a critical finding)
        page.evaluate("() => document.body.append(document.createElement('img'))")
        broken = serious_violations(page)
        browser.close()
    assert found == {"sign-in": [], "worklist": [], "exam": []}
    assert any(v.startswith("image-alt (critical)") for v in broken), broken
