"""radiologist report FHIR version, status and check state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rad_reports') as batch:
        batch.add_column(sa.Column('fhir_version', sa.String(length=64), server_default='',
                                   nullable=False))
        batch.add_column(sa.Column('fhir_status', sa.String(length=16), server_default='',
                                   nullable=False))
        # Reports stored before this revision were checked by the old flow.
        batch.add_column(sa.Column('checked', sa.Boolean(), server_default=sa.true(),
                                   nullable=False))
        batch.alter_column('checked', server_default=sa.false())


def downgrade() -> None:
    with op.batch_alter_table('rad_reports') as batch:
        batch.drop_column('checked')
        batch.drop_column('fhir_status')
        batch.drop_column('fhir_version')
