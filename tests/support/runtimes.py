"""A process's runtime as ``serve`` builds it, on a given database (tests of the runtime
and of the roles)."""

import contextlib

from xrayvision.config import load_settings
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore
from xrayvision.locks import LocalLocks
from xrayvision.runtime import open_runtime
from xrayvision.web.app import init_app
from xrayvision.web.health import Readiness

MODEL = "http://127.0.0.1:9/v1"  # a model URL for runtimes that only build, never call


def settings_for(tmp_path, roles, **env):
    return load_settings(tmp_path, env={"XRAYVISION_SERVER_ROLES": roles,
                                        "XRAYVISION_SERVER_DATA_DIR": str(tmp_path), **env})


@contextlib.asynccontextmanager
async def runtime_for(settings, db, tmp_path):
    bus = LocalBus()
    await bus.start()
    async with open_runtime(settings, db, bus, LocalLocks(), FilesystemStore(tmp_path / "img"),
                            "w1", init_app(settings, Readiness())) as rt:
        yield rt
    await bus.close()
