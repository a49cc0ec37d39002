"""Reports the FHIR poller could not link (``fhir_unlinked``), with why, for the admins.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

UTC = xrayvision.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'fhir_unlinked',
        sa.Column('fhir_id', sa.String(length=128), nullable=False),
        sa.Column('cnp', sa.String(length=64), nullable=False),
        sa.Column('accessions', sa.String(length=256), nullable=False),
        sa.Column('rule', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('effective', UTC, nullable=True),
        sa.Column('first_seen', UTC, nullable=False),
        sa.Column('last_seen', UTC, nullable=False),
        sa.PrimaryKeyConstraint('fhir_id', name=op.f('pk_fhir_unlinked')),
    )
    op.create_index('ix_fhir_unlinked_last_seen', 'fhir_unlinked', ['last_seen'])


def downgrade() -> None:
    # (a list the next poll cycles rebuild)
    op.drop_index('ix_fhir_unlinked_last_seen', table_name='fhir_unlinked')
    op.drop_table('fhir_unlinked')
