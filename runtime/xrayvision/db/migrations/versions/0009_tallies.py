"""Running tallies for the global statistics: per UTC day of receipt, kind of unit (AI
read, study, image) and values (AI and radiologist severity, review verdict, endpoint),
how many units and their model latencies summed (``tallies``); what each unit adds now
(``tally_facts``). Kept by the transactions that write reports from now on.

Existing data: every current AI read, and every study and image with an AI read or a
checked radiologist report, is counted as ``repo.restate_tallies`` would count it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tallies',
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('ai', sa.Integer(), nullable=False),
        sa.Column('rad', sa.Integer(), nullable=False),
        sa.Column('review', sa.Integer(), nullable=False),
        sa.Column('endpoint', sa.String(length=32), nullable=False),
        sa.Column('n', sa.Integer(), nullable=False),
        sa.Column('latency', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('day', 'kind', 'ai', 'rad', 'review', 'endpoint',
                                name=op.f('pk_tallies')),
    )
    op.create_table(
        'tally_facts',
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('uid', sa.String(length=64), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('ai', sa.Integer(), nullable=False),
        sa.Column('rad', sa.Integer(), nullable=False),
        sa.Column('review', sa.Integer(), nullable=False),
        sa.Column('endpoint', sa.String(length=32), nullable=False),
        sa.Column('latency', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('kind', 'uid', name=op.f('pk_tally_facts')),
    )
    if op.get_bind().dialect.name == "postgresql":
        def day(column: str) -> str:
            return f"({column} AT TIME ZONE 'UTC')::date"
        unknown = "DATE '1970-01-01'"
    else:  # SQLite keeps UTC without a zone
        def day(column: str) -> str:
            return f"date({column})"
        unknown = "'1970-01-01'"
    columns = "kind, uid, day, ai, rad, review, endpoint, latency"
    op.execute(
        f"INSERT INTO tally_facts ({columns}) "
        f"SELECT 'read', a.uid, COALESCE({day('e.created')}, {day('s.created')}, {unknown}), "
        "a.severity, -2, a.review_correct, COALESCE(a.endpoint, ''), COALESCE(a.latency, 0) "
        "FROM ai_reports a LEFT JOIN exams e ON e.uid = a.uid "
        "LEFT JOIN studies s ON s.uid = a.uid")
    for kind, unit, read_key in (("study", "studies u", "u.uid"),
                                 ("image", "exams u", "u.read_uid")):
        op.execute(
            f"INSERT INTO tally_facts ({columns}) "
            f"SELECT '{kind}', u.uid, {day('u.created')}, COALESCE(a.severity, -2), "
            "COALESCE(r.severity, -2), -1, '', 0 "
            f"FROM {unit} LEFT JOIN ai_reports a ON a.uid = {read_key} "
            "LEFT JOIN rad_reports r ON r.uid = u.uid AND r.checked "
            "WHERE a.uid IS NOT NULL OR r.uid IS NOT NULL")
    op.execute(
        "INSERT INTO tallies (day, kind, ai, rad, review, endpoint, n, latency) "
        "SELECT day, kind, ai, rad, review, endpoint, COUNT(*), SUM(latency) "
        "FROM tally_facts GROUP BY day, kind, ai, rad, review, endpoint")


def downgrade() -> None:
    # (counts of what the other tables hold: nothing is lost)
    op.drop_table('tally_facts')
    op.drop_table('tallies')
