from llamacontroller.supervisor.eviction import Candidate, plan_eviction

MB = 2**20


def c(model_id: str, size: int = 100, in_flight: int = 0, last_used: float = 0) -> Candidate:
    return Candidate(model_id, size * MB, in_flight, last_used)


def test_nothing_to_do_when_it_fits() -> None:
    plan = plan_eviction([c("a")], need_bytes=100 * MB, free_bytes=1000 * MB, max_loaded=2)
    assert plan.fits and plan.victims == ()


def test_max_loaded_evicts_least_recently_used() -> None:
    plan = plan_eviction([c("a", last_used=5), c("b", last_used=1)], 10 * MB, 1000 * MB, max_loaded=2)
    assert plan.victims == ("b",)


def test_idle_models_go_before_busy_ones() -> None:
    running = [c("busy", in_flight=2, last_used=0), c("idle", last_used=10)]
    assert plan_eviction(running, 10 * MB, 1000 * MB, max_loaded=2).victims == ("idle",)


def test_memory_pressure_evicts_until_it_fits() -> None:
    running = [c("a", 300, last_used=1), c("b", 300, last_used=2), c("c", 300, last_used=3)]
    plan = plan_eviction(running, need_bytes=500 * MB, free_bytes=0, max_loaded=10)
    assert plan.victims == ("a", "b")


def test_busy_model_is_a_victim_only_when_nothing_else_helps() -> None:
    plan = plan_eviction([c("busy", in_flight=1)], 10 * MB, 1000 * MB, max_loaded=1)
    assert plan.victims == ("busy",)  # the caller drains it; it is never killed mid-request


def test_refuses_when_even_everything_is_not_enough() -> None:
    plan = plan_eviction([c("a", 100)], need_bytes=5000 * MB, free_bytes=100 * MB, max_loaded=4)
    assert not plan.fits and plan.victims == ()
    assert "needs 5000 MiB" in plan.reason
