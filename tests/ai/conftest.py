import pytest

from support.model_stub import Stub


@pytest.fixture
async def stubs():
    """Two stub model servers: (primary, secondary)."""
    primary, secondary = await Stub().start(), await Stub().start()
    yield primary, secondary
    await primary.stop()
    await secondary.stop()
