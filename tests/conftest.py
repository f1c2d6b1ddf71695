import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import PostgresServer  # noqa: E402


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (Debian postgresql, temp dir, free port)."""
    server = PostgresServer().start()
    yield server
    server.stop()


_db_counter = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The repository runs on both: SQLite (the embedded default) and a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'overcloud.db'}"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"oc_test_{os.getpid()}_{next(_db_counter)}")


# -- the cloud labs' one-time builds ---------------------------------------------------------------
# The tests under integration/clouds need two heavy lab parts made once per machine and cached
# outside the checkout (/var/cache/overcloud): the namespace instances' root filesystem
# (lab/instance.py rootfs, ~70 s) and the OpenStack lab's Debian 12 chroot (scripts/openstack-lab.sh
# build, ~4 min). On a fresh machine they are built in the background from the start of the
# session while the other tests run, and the cloud tests run last; on a warm machine both are
# cache hits that return at once. The labs' own `up` takes the same build locks, so a test that
# gets there first waits for the build under way instead of starting a second one.
_REPO = Path(__file__).resolve().parents[1]
_CLOUDS = Path(__file__).resolve().parent / "integration" / "clouds"
_prebuild: dict = {}


def pytest_collection_modifyitems(session, config, items):
    cloud = [i for i in items if _CLOUDS in Path(str(i.fspath)).parents]
    if not cloud:
        return
    if len(cloud) < len(items):
        ids = {id(i) for i in cloud}
        items[:] = [i for i in items if id(i) not in ids] + cloud
    if os.geteuid() == 0 and not hasattr(config, "workerinput") and not config.option.collectonly:
        import subprocess
        import tempfile

        log = Path(tempfile.gettempdir()) / f"overcloud-lab-builds-{os.getpid()}.log"  # removed when both succeed
        script = (f'/usr/bin/python3 "{_REPO}/lab/instance.py" rootfs >/dev/null && '
                  f'bash "{_REPO}/scripts/openstack-lab.sh" build >/dev/null && rm -f "{log}"')
        # not a child of this process (tests check that this process has none left, e.g. the ssh
        # transport's), in a session of its own to be stopped at the end; nice: the builds take what
        # the tests leave of the two cores
        r = subprocess.run(["sh", "-c", 'setsid nice -n 10 sh -c "$1" >>"$2" 2>&1 </dev/null & echo $!', "sh",
                            script, str(log)], capture_output=True, text=True, check=True)
        pid = int(r.stdout.strip())
        _prebuild["pid"], _prebuild["start"] = pid, _starttime(pid)


def _starttime(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pytest_sessionfinish(session, exitstatus):
    pid = _prebuild.pop("pid", None)
    if pid is not None and _starttime(pid) is not None and _starttime(pid) == _prebuild.get("start"):
        import signal

        try:  # the session ended before the builds did: stop them (their session: the builds' children too)
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
