"""The results outbox (``result_outbox``: AI reads to send to the PACS and the HIS) and
each exam's SOP Class UID and Patient's Name as received (``exams.sop_class``,
``exams.patient_name``: what the AI read's SR references and repeats).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

UTC = xrayvision.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('exams') as batch:
        batch.add_column(sa.Column('sop_class', sa.String(length=64), server_default='',
                                   nullable=False))
        batch.add_column(sa.Column('patient_name', sa.String(length=256), server_default='',
                                   nullable=False))
    op.create_table(
        'result_outbox',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('destination', sa.String(length=16), nullable=False),
        sa.Column('uid', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('review', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('not_before', UTC, nullable=False),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.Column('lease_expires', UTC, nullable=True),
        sa.Column('created', UTC, nullable=False),
        sa.Column('sent', UTC, nullable=True),
        sa.CheckConstraint("status IN ('pending', 'sent', 'dead', 'superseded')",
                           name=op.f('ck_result_outbox_status')),
        sa.CheckConstraint("destination IN ('dicom', 'fhir')",
                           name=op.f('ck_result_outbox_destination')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_result_outbox')),
    )
    op.create_index('ix_result_outbox_due', 'result_outbox', ['status', 'not_before', 'id'])
    op.create_index('ix_result_outbox_uid', 'result_outbox', ['uid', 'destination'])


def downgrade() -> None:
    bind = op.get_bind()
    unsent = bind.execute(sa.text(
        "SELECT count(*) FROM result_outbox WHERE status IN ('pending', 'dead')")).scalar()
    if unsent:
        raise RuntimeError(f"result_outbox holds {unsent} results not sent: send or "
                           "clear them before downgrading")
    op.drop_index('ix_result_outbox_uid', table_name='result_outbox')
    op.drop_index('ix_result_outbox_due', table_name='result_outbox')
    op.drop_table('result_outbox')
    with op.batch_alter_table('exams') as batch:
        batch.drop_column('patient_name')
        batch.drop_column('sop_class')
