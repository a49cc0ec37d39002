"""Shadow models' reads (``shadow_reads``): a copy of live reads answered by a model
under evaluation, kept apart from the AI reads.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

UTC = xrayvision.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'shadow_reads',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('uid', sa.String(length=64), nullable=False),
        sa.Column('prompt_version', sa.String(length=16), nullable=False),
        sa.Column('created', UTC, nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('positive', sa.Integer(), nullable=False),
        sa.Column('severity', sa.Integer(), nullable=False),
        sa.Column('confidence', sa.Integer(), nullable=False),
        sa.Column('summary', sa.Text(), nullable=False),
        sa.Column('model', sa.String(length=256), nullable=False),
        sa.Column('endpoint', sa.String(length=32), nullable=False),
        sa.Column('latency', sa.Float(), nullable=False),
        sa.CheckConstraint('positive BETWEEN -1 AND 1', name=op.f('ck_shadow_reads_positive')),
        sa.CheckConstraint('severity BETWEEN -1 AND 10', name=op.f('ck_shadow_reads_severity')),
        sa.CheckConstraint('confidence BETWEEN -1 AND 100',
                           name=op.f('ck_shadow_reads_confidence')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_shadow_reads')),
    )
    op.create_index('ix_shadow_reads_uid_model', 'shadow_reads', ['uid', 'model'])
    op.create_index('ix_shadow_reads_created', 'shadow_reads', ['created'])


def downgrade() -> None:
    op.drop_index('ix_shadow_reads_created', table_name='shadow_reads')
    op.drop_index('ix_shadow_reads_uid_model', table_name='shadow_reads')
    op.drop_table('shadow_reads')
