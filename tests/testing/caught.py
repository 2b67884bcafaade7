"""What a planted bug's check must show, whatever the zoo: every property named for it failed, and each failure
carries its minimal counterexample."""


def assert_caught(bug, report) -> None:
    """``report`` (the :class:`bnsym.testing.results.Report` of a failed check of ``bug``) names every property of
    ``bug.caught_by`` among its failures, and every failure has a counterexample."""
    missed = set(bug.caught_by) - set(report.failed)
    assert not missed, f"{bug.name} ({bug.bug_class}) was not caught by {sorted(missed)}:\n{report}"
    for result in report.results:
        if result.status == "failed":
            assert result.counterexample is not None, f"{result.name} failed without a counterexample"
