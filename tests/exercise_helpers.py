"""What the tests of the exercise checks share: a stub as the notebooks ship it, and the two
outcomes every check must report (right answer: "correct"; untouched stub: "not attempted")."""

from course_lib.checks._core import Verdict


def right(verdict) -> bool:
    """A check's verdict on a right answer (a Verdict, not a bare bool)."""
    return isinstance(verdict, Verdict) and bool(verdict)


def not_yet(verdict) -> bool:
    """A check's verdict on an untouched stub."""
    return isinstance(verdict, Verdict) and not verdict


def stub(*args, **kwargs):
    """A stub as the notebooks ship it."""
    raise NotImplementedError  # your code here


def assert_correct(check, answer, capsys):
    assert right(check(answer))
    assert "correct" in capsys.readouterr().out


def assert_not_attempted(check, capsys):
    assert not_yet(check(stub))
    out = capsys.readouterr().out
    assert "not attempted yet" in out and "solutions" in out
