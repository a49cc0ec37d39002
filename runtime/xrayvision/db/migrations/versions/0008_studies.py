"""Studies: each study rolled up from its images and, read per study, the unit the model
reads (its own read queue); AI reads and reviews keyed by what was read (an image's SOP
Instance UID or a study's key: ``exams.read_uid``), so their foreign key to ``exams`` goes

Existing data: every study UID seen becomes a study (an instance without one, a study of
its own) with its images' rollup; the reads so far were per image, so each exam's
``read_uid`` is its own UID and the studies carry no read of their own: a study whose
images were read is ``done`` (not read again), one with images still waiting is
``queued``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

UTC = xrayvision.db.models.UTCDateTime(timezone=True)
CLAIMABLE = sa.text("status IN ('queued', 'requeue')")
PROCESSING = sa.text("status = 'processing'")
FOREIGN_KEYS = (('rad_reports', 'fk_rad_reports_uid_exams'),
                ('ai_reports', 'fk_ai_reports_uid_exams'),
                ('ai_report_versions', 'fk_ai_report_versions_uid_exams'),
                ('reviews', 'fk_reviews_uid_exams'))


def upgrade() -> None:
    # Plain ADD COLUMN on exams, no batch (a batch copy would drop the table).
    op.add_column('exams', sa.Column('read_uid', sa.String(length=64), server_default='',
                                     nullable=False))
    op.execute("UPDATE exams SET read_uid = uid")
    for table, name in FOREIGN_KEYS:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(name, type_='foreignkey')
    op.create_table(
        'studies',
        sa.Column('uid', sa.String(length=64), nullable=False),
        sa.Column('cnp', sa.String(length=64), nullable=True),
        sa.Column('accession', sa.String(length=64), nullable=False),
        sa.Column('modality', sa.String(length=16), nullable=False),
        sa.Column('description', sa.String(length=256), nullable=False),
        sa.Column('regions', sa.String(length=256), nullable=False),
        sa.Column('views', sa.String(length=256), nullable=False),
        sa.Column('calling_aet', sa.String(length=16), nullable=False),
        sa.Column('study_datetime', UTC, nullable=True),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('images', sa.Integer(), nullable=False),
        sa.Column('readable', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('pending', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('severity', sa.Integer(), server_default='-1', nullable=False),
        sa.Column('reviewed', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('triage', sa.Integer(), server_default='0', nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('reason_code', sa.String(length=32), server_default='', nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.Column('lease_expires', UTC, nullable=True),
        sa.Column('not_before', UTC, nullable=True),
        sa.Column('created', UTC, nullable=False),
        sa.Column('last_image', UTC, nullable=False),
        sa.Column('updated', UTC, nullable=False),
        sa.CheckConstraint("status IN ('none', 'queued', 'processing', 'done', 'error', "
                           "'ignore', 'requeue')", name=op.f('ck_studies_status')),
        sa.ForeignKeyConstraint(['cnp'], ['patients.cnp'], ondelete='SET NULL',
                                name=op.f('fk_studies_cnp_patients')),
        sa.PrimaryKeyConstraint('uid', name=op.f('pk_studies')),
    )
    op.create_index('ix_studies_triage', 'studies',
                    ['triage', 'priority', 'severity', 'created', 'uid'])
    op.create_index('ix_studies_created', 'studies', ['created'])
    op.create_index('ix_studies_cnp', 'studies', ['cnp'])
    op.create_index('ix_studies_accession', 'studies', ['accession'])
    op.create_index('ix_studies_claim', 'studies', [sa.text('priority DESC'), 'created'],
                    postgresql_where=CLAIMABLE, sqlite_where=CLAIMABLE)
    op.create_index('ix_studies_lease', 'studies', ['lease_expires'],
                    postgresql_where=PROCESSING, sqlite_where=PROCESSING)
    # One study per key with its images' rollup (the columns the application fills with
    # repo.refresh_study; the text columns take one non-empty image value: MIN, portable).
    # Status: queued when an image waits for a read (read per study, the backlog is
    # then read by study; read per image, the images carry the reads and this status is
    # not used); done when an image was read; still converting (none) while an image is;
    # ignore when every image was ignored; else error.
    def first(column: str) -> str:  # one non-empty value of the images' (portable SQL)
        return f"COALESCE(MIN(NULLIF({column}, '')), '')"

    op.execute(f"""
        INSERT INTO studies (uid, cnp, accession, modality, description, regions, views,
            calling_aet, study_datetime, priority, images, readable, status, pending,
            severity, reviewed, triage, error, reason_code, attempts, created, last_image,
            updated)
        SELECT k, MIN(cnp), {first('accession')}, {first('modality')},
            {first('study_description')}, {first('region')}, {first('projection')},
            {first('calling_aet')}, MIN(series_datetime),
            MAX(priority), COUNT(*),
            SUM(CASE WHEN status IN ('queued', 'processing', 'done', 'requeue')
                     THEN 1 ELSE 0 END),
            CASE WHEN SUM(CASE WHEN status IN ('queued', 'processing', 'requeue')
                               THEN 1 ELSE 0 END) > 0 THEN 'queued'
                 WHEN SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END) > 0 THEN 'done'
                 WHEN SUM(CASE WHEN status = 'none' THEN 1 ELSE 0 END) > 0 THEN 'none'
                 WHEN SUM(CASE WHEN status = 'ignore' THEN 1 ELSE 0 END) = COUNT(*)
                      THEN 'ignore'
                 ELSE 'error' END,
            false, MAX(severity), false, MAX(triage), '', '', 0, MIN(created),
            MAX(created), MAX(updated)
        FROM (SELECT CASE WHEN study_uid = '' THEN uid ELSE study_uid END AS k, *
              FROM exams) AS e
        GROUP BY k
    """)
    # Each study's radiologist report: its images' (the same report; the latest updated).
    rows = op.get_bind().execute(sa.text(
        "SELECT e.study_uid, r.uid FROM rad_reports r JOIN exams e ON e.uid = r.uid "
        "WHERE e.study_uid != '' ORDER BY e.study_uid, r.updated, r.uid")).all()
    latest = {study: uid for study, uid in rows}
    columns = ("fhir_id, fhir_version, fhir_status, text, text_en, radiologist, positive, "
               "severity, summary, checked, created, updated")
    for study, uid in latest.items():
        op.execute(sa.text(f"INSERT INTO rad_reports (uid, {columns}) SELECT :study, "
                           f"{columns} FROM rad_reports WHERE uid = :uid")
                   .bindparams(study=study, uid=uid))


def downgrade() -> None:
    # Reads of studies (and their reviews) have no exam to point at; downgrading would
    # have to delete them, and nothing a model or a radiologist produced is deleted.
    orphans = op.get_bind().scalar(sa.text(
        "SELECT COUNT(*) FROM ai_reports WHERE uid NOT IN (SELECT uid FROM exams)"))
    if orphans:
        raise RuntimeError(f"{orphans} AI reads are of studies, which revision 0007 cannot "
                           "hold; downgrading would delete them (and their reviews)")
    op.drop_table('studies')
    # the radiologists' reports linked to studies are copies of their images' ones
    op.execute("DELETE FROM rad_reports WHERE uid NOT IN (SELECT uid FROM exams)")
    for table, name in FOREIGN_KEYS:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(name, 'exams', ['uid'], ['uid'], ondelete='CASCADE')
    with op.batch_alter_table('exams') as batch:
        batch.drop_column('read_uid')
