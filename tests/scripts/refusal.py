"""For the matrix scripts: a call every rank makes with a bad argument is refused on every rank,
and breaks the group it was given (a spare one, split off for it)."""
import ringdist as rd


def check_refused(parent, call, error, words):
    """`call(spare)` on a group split off `parent` raises `error` on every rank; the spare group
    is then broken, its error naming `words`."""
    spare = parent.split(0)
    try:
        call(spare)
    except error:
        pass
    else:
        raise AssertionError(f"{call} accepted a bad argument")
    try:
        rd.barrier(group=spare)
    except rd.GroupBrokenError as exc:
        assert words in str(exc), exc
    else:
        raise AssertionError("a group stayed usable after a refused call")
    spare.close()
