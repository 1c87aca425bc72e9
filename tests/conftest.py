import os

import pytest

os.environ.setdefault("SLIDR_REQUIRE_NATIVE", "1")


@pytest.fixture
def redis_server():
    """A fresh real redis-server on a free loopback port, killed after the test."""
    from slidr.testing.redis_server import RedisServer
    with RedisServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def shared_redis():
    """One real redis-server for a whole run; tests must use their own key prefix."""
    from slidr.testing.redis_server import RedisServer
    with RedisServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def redis_cluster():
    """A real local Redis Cluster (3 masters + 3 replicas on free loopback ports) per module.
    Tests sharing it must use their own key prefix."""
    from slidr.testing.redis_cluster import RedisCluster
    with RedisCluster(masters=3, replicas=1) as c:
        yield c


@pytest.fixture(autouse=True)
def _progress_mode_per_test():
    """Each test starts with progress as a plain run has it: an in-process `--quiet` or
    `--progress` command sets the module's mode for the whole process."""
    from slidr import progress
    saved = progress.mode()
    progress.configure()
    yield
    progress._mode = saved
