"""``xrayvision-operator``: the kopf operator's entry point."""

from __future__ import annotations

import sys


def main() -> int:
    # The reconciliation logic is the operator issue's work; until it lands, say so
    # plainly instead of pretending to reconcile anything.
    print(
        "xrayvision-operator: the operator is not built yet (see the operator issue); "
        "nothing is reconciled",
        file=sys.stderr,
    )
    return 2
