"""`xrayvision serve --roles relay,fhir` in-process: the relay enriches the patient from
FHIR before the model call, then the poller links the radiologist's report."""

import asyncio
import datetime as dt

from support import records
from support.fhirpeer import PASSWORD, USER, diagnostic_report, patient
from support.model_stub import Stub
from support.pgserver import free_port
from xrayvision import serve as serve_module
from xrayvision.config import load_settings
from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.db.migrate import upgrade
from xrayvision.db.models import QUEUED
from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.images import FilesystemStore


async def test_relay_and_fhir_roles_together(tmp_path, sekmet, tag):
    cnp, uid = f"7{tag}", f"1.2.{int(tag, 16)}.1"
    sekmet.put(patient(f"p-{tag}", cnp, "Serve", "Ion", "1950-06-01", "male"))
    sekmet.put(diagnostic_report(f"r-{tag}", f"p-{tag}", "Pneumonie bazală dreaptă",
                                 accession=f"A-{tag}"))
    stub = await Stub().start()
    settings = load_settings(tmp_path, env={
        "XRAYVISION_SERVER_DATA_DIR": str(tmp_path / "data"),
        "XRAYVISION_WEB_PORT": str(free_port()),
        "XRAYVISION_DICOM_PORT": str(free_port()),
        "XRAYVISION_SERVER_ROLES": "relay,fhir",
        "XRAYVISION_AI_PRIMARY_URL": stub.url,
        "XRAYVISION_FHIR_URL": sekmet.url,
        "XRAYVISION_FHIR_USERNAME": USER,
        "XRAYVISION_FHIR_PASSWORD": PASSWORD,
        "XRAYVISION_FHIR_IDENTIFIER_SYSTEM": "urn:ro:cnp",
        "XRAYVISION_FHIR_POLL_INTERVAL": "5",
    })
    (tmp_path / "data").mkdir()
    db = Database(DatabaseOptions(url=settings.database_url))
    upgrade(db.engine)
    FilesystemStore(settings.images_path).put(uid, "png", b"\x89PNG\r\n\x1a\nfake")
    db.write_sync(records.add_converted, ExamInfo(uid=uid, accession=f"A-{tag}",
                                                region="chest", status=QUEUED),
                  PatientInfo(cnp=cnp))
    stop = asyncio.Event()
    task = asyncio.create_task(serve_module.serve(settings, stop=stop))
    try:
        for _ in range(300):
            assert not task.done(), "serve stopped by itself"
            rad = db.read_sync(records.get_rad_report, uid)
            if rad is not None and rad.checked:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no radiologist report was stored")
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 15) == 0
        await stub.stop()
    assert rad.text == "Pneumonie bazală dreaptă" and rad.text_en.startswith("[en] ")
    report_request = next(r for r in stub.state.requests
                          if isinstance(r["messages"][-1]["content"], list))
    user_text = report_request["messages"][-1]["content"][0]["text"]
    today = dt.datetime.now(dt.UTC).date()
    age = today.year - 1950 - ((today.month, today.day) < (6, 1))
    assert "Patient sex: male" in user_text and f"Patient age: {age} years" in user_text
    db.close()
