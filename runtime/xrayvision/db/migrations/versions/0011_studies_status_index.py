"""Studies counted by status from an index: the dashboard's queue sizes of studies.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_studies_status', 'studies', ['status'])


def downgrade() -> None:
    op.drop_index('ix_studies_status', table_name='studies')
