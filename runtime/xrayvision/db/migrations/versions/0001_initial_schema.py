"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('ts', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=128), nullable=False),
    sa.Column('remote', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_ts', ['ts'], unique=False)

    op.create_table('images',
    sa.Column('uid', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('uid', 'kind', name=op.f('pk_images'))
    )
    op.create_table('patients',
    sa.Column('cnp', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('sex', sa.String(length=1), nullable=False),
    sa.Column('created', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('cnp', name=op.f('pk_patients'))
    )
    op.create_table('exams',
    sa.Column('uid', sa.String(length=64), nullable=False),
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('accession', sa.String(length=64), nullable=False),
    sa.Column('cnp', sa.String(length=64), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('region', sa.String(length=64), nullable=False),
    sa.Column('projection', sa.String(length=64), nullable=False),
    sa.Column('protocol', sa.String(length=256), nullable=False),
    sa.Column('body_part', sa.String(length=64), nullable=False),
    sa.Column('study_description', sa.String(length=256), nullable=False),
    sa.Column('series_description', sa.String(length=256), nullable=False),
    sa.Column('series_datetime', xrayvision.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('calling_aet', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires', xrayvision.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('not_before', xrayvision.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('none', 'queued', 'processing', 'done', 'error', 'ignore', 'requeue')", name=op.f('ck_exams_status')),
    sa.ForeignKeyConstraint(['cnp'], ['patients.cnp'], name=op.f('fk_exams_cnp_patients'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('uid', name=op.f('pk_exams'))
    )
    with op.batch_alter_table('exams', schema=None) as batch_op:
        batch_op.create_index('ix_exams_cnp', ['cnp'], unique=False)
        batch_op.create_index('ix_exams_created', ['created'], unique=False)
        batch_op.create_index('ix_exams_lease', ['lease_expires'], unique=False, postgresql_where=sa.text("status = 'processing'"), sqlite_where=sa.text("status = 'processing'"))
        batch_op.create_index('ix_exams_region_created', ['region', 'created'], unique=False)
        batch_op.create_index('ix_exams_status_created', ['status', 'created'], unique=False)
        batch_op.create_index('ix_exams_study_uid', ['study_uid'], unique=False)
        # Autogenerate cannot reflect expression indexes; this one is kept by hand.
        batch_op.create_index('ix_exams_claim', [sa.text('priority DESC'), 'created'], unique=False, postgresql_where=sa.text("status IN ('queued', 'requeue')"), sqlite_where=sa.text("status IN ('queued', 'requeue')"))

    op.create_table('ai_reports',
    sa.Column('uid', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('positive', sa.Integer(), nullable=False),
    sa.Column('severity', sa.Integer(), nullable=False),
    sa.Column('confidence', sa.Integer(), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('model', sa.String(length=256), nullable=False),
    sa.Column('endpoint', sa.String(length=32), nullable=False),
    sa.Column('latency', sa.Float(), nullable=False),
    sa.Column('reviewed', sa.Boolean(), nullable=False),
    sa.Column('created', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('confidence BETWEEN -1 AND 100', name=op.f('ck_ai_reports_confidence')),
    sa.CheckConstraint('positive BETWEEN -1 AND 1', name=op.f('ck_ai_reports_positive')),
    sa.CheckConstraint('severity BETWEEN -1 AND 10', name=op.f('ck_ai_reports_severity')),
    sa.ForeignKeyConstraint(['uid'], ['exams.uid'], name=op.f('fk_ai_reports_uid_exams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('uid', name=op.f('pk_ai_reports'))
    )
    with op.batch_alter_table('ai_reports', schema=None) as batch_op:
        batch_op.create_index('ix_ai_reports_severity', ['severity'], unique=False)

    op.create_table('rad_reports',
    sa.Column('uid', sa.String(length=64), nullable=False),
    sa.Column('fhir_id', sa.String(length=128), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('text_en', sa.Text(), nullable=False),
    sa.Column('radiologist', sa.String(length=256), nullable=False),
    sa.Column('positive', sa.Integer(), nullable=False),
    sa.Column('severity', sa.Integer(), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('created', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('positive BETWEEN -1 AND 1', name=op.f('ck_rad_reports_positive')),
    sa.CheckConstraint('severity BETWEEN -1 AND 10', name=op.f('ck_rad_reports_severity')),
    sa.ForeignKeyConstraint(['uid'], ['exams.uid'], name=op.f('fk_rad_reports_uid_exams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('uid', name=op.f('pk_rad_reports'))
    )
    with op.batch_alter_table('rad_reports', schema=None) as batch_op:
        batch_op.create_index('ix_rad_reports_fhir_id', ['fhir_id'], unique=False)
        batch_op.create_index('ix_rad_reports_severity', ['severity'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('rad_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_rad_reports_severity')
        batch_op.drop_index('ix_rad_reports_fhir_id')

    op.drop_table('rad_reports')
    with op.batch_alter_table('ai_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_ai_reports_severity')

    op.drop_table('ai_reports')
    with op.batch_alter_table('exams', schema=None) as batch_op:
        batch_op.drop_index('ix_exams_study_uid')
        batch_op.drop_index('ix_exams_claim')
        batch_op.drop_index('ix_exams_status_created')
        batch_op.drop_index('ix_exams_region_created')
        batch_op.drop_index('ix_exams_lease', postgresql_where=sa.text("status = 'processing'"), sqlite_where=sa.text("status = 'processing'"))
        batch_op.drop_index('ix_exams_created')
        batch_op.drop_index('ix_exams_cnp')

    op.drop_table('exams')
    op.drop_table('patients')
    op.drop_table('images')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_ts')

    op.drop_table('audit_log')
