"""What the tests of the exercise checks share: a stub as the notebooks ship it, and the two
outcomes every check must report (right answer: "correct"; untouched stub: "not attempted")."""


def stub(*args, **kwargs):
    """A stub as the notebooks ship it."""
    raise NotImplementedError  # your code here


def assert_correct(check, answer, capsys):
    assert check(answer) is True
    assert "correct" in capsys.readouterr().out


def assert_not_attempted(check, capsys):
    assert check(stub) is False
    out = capsys.readouterr().out
    assert "not attempted yet" in out and "solutions" in out
