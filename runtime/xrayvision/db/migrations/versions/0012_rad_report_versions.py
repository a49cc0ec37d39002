"""Radiologist report history (``rad_report_versions``): each report as it was before a
new version or another report replaced it, or the HIS withdrew it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

UTC = xrayvision.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'rad_report_versions',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('uid', sa.String(length=64), nullable=False),
        sa.Column('fhir_id', sa.String(length=128), nullable=False),
        sa.Column('fhir_version', sa.String(length=64), nullable=False),
        sa.Column('fhir_status', sa.String(length=16), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('text_en', sa.Text(), nullable=False),
        sa.Column('radiologist', sa.String(length=256), nullable=False),
        sa.Column('positive', sa.Integer(), nullable=False),
        sa.Column('severity', sa.Integer(), nullable=False),
        sa.Column('summary', sa.Text(), nullable=False),
        sa.Column('checked', sa.Boolean(), nullable=False),
        sa.Column('created', UTC, nullable=False),
        sa.Column('ended', UTC, nullable=False),
        sa.Column('ended_by', sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_rad_report_versions')),
    )
    op.create_index('ix_rad_report_versions_uid', 'rad_report_versions', ['uid'])


def downgrade() -> None:
    # The history is what the HIS sent and withdrew: refuse to drop it with rows in it.
    count = op.get_bind().execute(sa.text('SELECT count(*) FROM rad_report_versions')).scalar()
    if count:
        raise RuntimeError(
            f"rad_report_versions holds {count} earlier or withdrawn radiologist reports; "
            "a downgrade would lose them (export or delete them first)")
    op.drop_index('ix_rad_report_versions_uid', table_name='rad_report_versions')
    op.drop_table('rad_report_versions')
