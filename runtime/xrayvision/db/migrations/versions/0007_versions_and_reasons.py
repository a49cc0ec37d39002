"""AI reads kept by version (a requeue adds one, never overwrites), every review kept,
a machine-readable reason code for ignore and error, and the worklist's urgent-first
order kept on the exam (severity, reviewed, triage and their index)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

UTC = xrayvision.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN, no batch: on SQLite a batch copies and drops the exams table,
    # and dropping it would cascade to every report.
    op.add_column('exams', sa.Column('reason_code', sa.String(length=32), server_default='',
                                     nullable=False))
    op.add_column('exams', sa.Column('severity', sa.Integer(), server_default='-1',
                                     nullable=False))
    op.add_column('exams', sa.Column('reviewed', sa.Boolean(), server_default=sa.false(),
                                     nullable=False))
    op.add_column('exams', sa.Column('triage', sa.Integer(), server_default='0',
                                     nullable=False))
    op.create_index('ix_exams_triage', 'exams',
                    ['triage', 'priority', 'severity', 'created', 'uid'], unique=False)
    op.create_index('ix_exams_region_triage', 'exams',
                    ['region', 'triage', 'priority', 'severity', 'created', 'uid'],
                    unique=False)
    # Each exam's current read, copied from its report; triage at the default threshold
    # (5): the relay recomputes it at start with the configured one.
    op.execute("UPDATE exams SET severity = (SELECT a.severity FROM ai_reports a "
               "WHERE a.uid = exams.uid), reviewed = (SELECT a.reviewed FROM ai_reports a "
               "WHERE a.uid = exams.uid) "
               "WHERE EXISTS (SELECT 1 FROM ai_reports a WHERE a.uid = exams.uid)")
    op.execute(sa.text("UPDATE exams SET triage = 1 WHERE NOT reviewed "
                       "AND (severity >= 5 OR priority >= 3)"))
    op.add_column('ai_reports', sa.Column('version', sa.Integer(), server_default='1',
                                          nullable=False))
    op.add_column('ai_reports', sa.Column('prompt_version', sa.String(length=16),
                                          server_default='', nullable=False))
    op.create_table(
        'ai_report_versions',
        sa.Column('uid', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('positive', sa.Integer(), nullable=False),
        sa.Column('severity', sa.Integer(), nullable=False),
        sa.Column('confidence', sa.Integer(), nullable=False),
        sa.Column('summary', sa.Text(), nullable=False),
        sa.Column('model', sa.String(length=256), nullable=False),
        sa.Column('endpoint', sa.String(length=32), nullable=False),
        sa.Column('latency', sa.Float(), nullable=False),
        sa.Column('prompt_version', sa.String(length=16), nullable=False),
        sa.Column('review_correct', sa.Integer(), nullable=False),
        sa.Column('review_note', sa.Text(), nullable=False),
        sa.Column('reviewed_by', sa.String(length=128), nullable=False),
        sa.Column('reviewed_at', UTC, nullable=True),
        sa.Column('created', UTC, nullable=False),
        sa.Column('superseded', UTC, nullable=False),
        sa.ForeignKeyConstraint(['uid'], ['exams.uid'], ondelete='CASCADE',
                                name=op.f('fk_ai_report_versions_uid_exams')),
        sa.PrimaryKeyConstraint('uid', 'version', name=op.f('pk_ai_report_versions')),
    )
    op.create_table(
        'reviews',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('uid', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('correct', sa.Boolean(), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('at', UTC, nullable=False),
        sa.ForeignKeyConstraint(['uid'], ['exams.uid'], ondelete='CASCADE',
                                name=op.f('fk_reviews_uid_exams')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reviews')),
    )
    op.create_index('ix_reviews_uid', 'reviews', ['uid'], unique=False)
    # The reviews given so far become each report's first recorded review.
    op.execute(
        "INSERT INTO reviews (uid, version, correct, note, username, at) "
        "SELECT uid, 1, review_correct = 1, review_note, reviewed_by, "
        "COALESCE(reviewed_at, updated) FROM ai_reports WHERE review_correct IN (0, 1)")
    # What the error texts written so far say, as codes.
    for code, pattern in (("decode_failed", "conversion failed:%"),
                          ("dicom_missing", "received DICOM missing%"),
                          ("worker_lost", "lease expired%"),
                          ("worker_lost", "the worker reading it stopped%"),
                          ("model_rejected", "ModelRejected:%"),
                          ("model_bad_output", "ModelBadOutput:%"),
                          ("image_missing", "MissingImage:%")):
        op.execute(sa.text("UPDATE exams SET reason_code = :code WHERE status = 'error' "
                           "AND reason_code = '' AND error LIKE :pattern")
                   .bindparams(code=code, pattern=pattern))
    op.execute("UPDATE exams SET reason_code = 'read_failed' "
               "WHERE status = 'error' AND reason_code = ''")
    op.execute("UPDATE exams SET reason_code = 'no_region_rule', "
               "error = 'no region rule matches the text of this image' "
               "WHERE status = 'ignore' AND reason_code = ''")


def downgrade() -> None:
    op.drop_index('ix_reviews_uid', table_name='reviews')
    op.drop_table('reviews')
    op.drop_table('ai_report_versions')
    with op.batch_alter_table('ai_reports') as batch:
        batch.drop_column('prompt_version')
        batch.drop_column('version')
    op.drop_index('ix_exams_region_triage', table_name='exams')
    op.drop_index('ix_exams_triage', table_name='exams')
    with op.batch_alter_table('exams') as batch:
        batch.drop_column('triage')
        batch.drop_column('reviewed')
        batch.drop_column('severity')
        batch.drop_column('reason_code')
