"""`python -m metacompress.train`: the trainer of P_meta. It lives in
`metacompress.training.trainer`, whose docstring says how to use it; a missing extra is one
`error:` line."""

if __name__ == "__main__":
    import signal
    import sys

    # SIGTERM unwinds like Ctrl-C, so that a temporary output being written is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from .extras import run

    run("metacompress.training.trainer")
