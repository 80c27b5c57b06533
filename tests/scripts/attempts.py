"""What a launched test script prints of one call it tries: `<label> ok`, or `<label> <error
type>: <message>` (any exception: the test compares them). Scripts here import it by name (their
own directory is first on the path)."""


def attempt(label, call):
    try:
        call()
        print(f"{label} ok", flush=True)
    except Exception as exc:  # noqa: BLE001 - printed for the test to compare
        print(f"{label} {type(exc).__name__}: {exc}", flush=True)
