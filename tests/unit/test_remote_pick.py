"""Which URL of a remote model a request goes to."""

from llamacontroller.supervisor.remote import Target, pick


class Pool:
    def close(self) -> None:
        pass


def test_least_busy_healthy_url_first_listed_on_a_tie() -> None:
    a, b, c = (Target(url, Pool()) for url in ("http://a", "http://b", "http://c"))
    targets = [a, b, c]
    assert pick(targets) is a
    a.in_flight = 2
    b.in_flight = 1
    c.in_flight = 1
    assert pick(targets) is b
    b.healthy = False
    assert pick(targets) is c
    c.healthy = False
    assert pick(targets) is a
    a.healthy = False
    assert pick(targets) is None
