"""Dashboard sign-ins (``web_sessions``): a session cookie's token hash, its user, its
CSRF token and when it was last used (the idle timeout).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

import xrayvision.db.models

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

UTC = xrayvision.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'web_sessions',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=128), nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created', UTC, nullable=False),
        sa.Column('last_seen', UTC, nullable=False),
        sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_web_sessions')),
    )
    op.create_index('ix_web_sessions_last_seen', 'web_sessions', ['last_seen'])


def downgrade() -> None:
    # (sign-ins only: users sign in again)
    op.drop_index('ix_web_sessions_last_seen', table_name='web_sessions')
    op.drop_table('web_sessions')
