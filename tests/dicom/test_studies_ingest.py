"""Instances of several studies arriving interleaved over two associations are grouped
into their studies as they are converted (the rollup and, read per study, the queue
state), on both database backends."""

from __future__ import annotations

import asyncio

from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select

from dicom.conftest import ingest_settings, running_ingest
from support.xrays import make_xray
from xrayvision.db.models import QUEUED, Study
from xrayvision.dicom.ingest import DX_PRESENTATION


def send(port: int, datasets: list) -> list[int]:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(DX_PRESENTATION, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="XRAYVISION")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


async def test_interleaved_studies_from_two_senders_are_grouped(tmp_path, db):
    settings = ingest_settings(tmp_path, XRAYVISION_AI_STUDY_QUIET="30")
    chest, hand = generate_uid(), generate_uid()
    views = [("PA", chest, "CHEST"), ("PA", hand, "HAND"), ("LATERAL", chest, "CHEST"),
             ("OBLIQUE", hand, "HAND")]
    sets = [make_xray(uid=generate_uid(), study_uid=study, view=view, body_part=part,
                      description=f"XR {part}", seed=i)
            for i, (view, study, part) in enumerate(views)]
    async with running_ingest(settings, db, tmp_path) as ingest:
        # one association sends the first and third, the other the second and fourth
        statuses = await asyncio.gather(
            asyncio.to_thread(send, ingest.port, sets[0::2]),
            asyncio.to_thread(send, ingest.port, sets[1::2]))
        assert statuses == [[0, 0], [0, 0]]
        await ingest.converted()
        studies = {s.uid: s for s in await db.read(
            lambda session: session.scalars(select(Study)).all())}
    assert set(studies) == {chest, hand}
    assert (studies[chest].images, studies[chest].readable, studies[chest].regions) == (
        2, 2, "chest")
    assert set(studies[chest].views.split(",")) == {"PA", "LATERAL"}
    assert studies[hand].images == 2 and studies[hand].regions == "hand"
    for study in studies.values():  # waiting for the quiet time after the last image
        assert study.status == QUEUED and study.not_before is not None
        assert study.not_before > study.last_image
