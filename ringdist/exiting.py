"""Whether ringdist's exit hook has run (`ringdist._at_exit`), whatever of ringdist was loaded by
then: code that runs after it (an exit handler registered before ringdist was imported, a
`__del__` at teardown) gets errors saying so, and `init()` joins no job again."""

done = False
WHY = "ringdist shut down as this process exits: its exit hook has run"


def mark() -> None:
    """The exit hook has run."""
    global done
    done = True
