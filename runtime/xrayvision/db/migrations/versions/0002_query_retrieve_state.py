"""query retrieve state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retrievals',
    sa.Column('study_uid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('instances', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('updated', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('study_uid', name=op.f('pk_retrievals'))
    )
    op.create_table('state',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('updated', xrayvision.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_state'))
    )


def downgrade() -> None:
    op.drop_table('state')
    op.drop_table('retrievals')
