"""relay workers and their heartbeats, so that a dead worker's exams are reclaimed at once

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'workers',
        sa.Column('id', sa.String(length=128), nullable=False),
        sa.Column('host', sa.String(length=255), server_default='', nullable=False),
        sa.Column('pid', sa.Integer(), server_default='0', nullable=False),
        sa.Column('started', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('heartbeat', xrayvision.db.models.UTCDateTime(timezone=True),
                  nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_workers')),
    )


def downgrade() -> None:
    op.drop_table('workers')
