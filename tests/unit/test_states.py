from llamacontroller.supervisor.states import TRANSITIONS, State


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(State)


def test_ready_is_reached_only_through_starting_or_a_refused_stop() -> None:
    sources = {s for s, targets in TRANSITIONS.items() if State.READY in targets}
    assert sources == {State.STARTING, State.STOPPING}


def test_no_state_goes_to_itself() -> None:
    assert all(state not in targets for state, targets in TRANSITIONS.items())


def test_documented_in_architecture() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    for state, targets in TRANSITIONS.items():
        for target in targets:
            assert f"| {state.value} | {target.value} |" in doc, f"{state} -> {target} missing from the table"
