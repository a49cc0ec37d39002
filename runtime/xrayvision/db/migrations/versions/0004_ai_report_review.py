"""radiologist review of the AI report: verdict, note, who and when

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ai_reports') as batch:
        batch.add_column(sa.Column('review_correct', sa.Integer(), server_default='-1',
                                   nullable=False))
        batch.add_column(sa.Column('review_note', sa.Text(), server_default='', nullable=False))
        batch.add_column(sa.Column('reviewed_by', sa.String(length=128), server_default='',
                                   nullable=False))
        batch.add_column(sa.Column('reviewed_at',
                                   xrayvision.db.models.UTCDateTime(timezone=True),
                                   nullable=True))
        batch.create_check_constraint(op.f('ck_ai_reports_review_correct'),
                                      'review_correct BETWEEN -1 AND 1')


def downgrade() -> None:
    with op.batch_alter_table('ai_reports') as batch:
        batch.drop_constraint(op.f('ck_ai_reports_review_correct'), type_='check')
        batch.drop_column('reviewed_at')
        batch.drop_column('reviewed_by')
        batch.drop_column('review_note')
        batch.drop_column('review_correct')
