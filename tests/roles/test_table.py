"""The roles table is what ``[server] roles`` accepts."""

from xrayvision import config
from xrayvision.roles import ROLES


def test_every_configurable_role_has_an_entry_point():
    assert tuple(ROLES) == config.ROLES
    assert all(callable(run) for run in ROLES.values())
