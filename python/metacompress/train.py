"""`python -m metacompress.train`: the trainer of P_meta; it lives in
`metacompress.training.trainer`, whose docstring says how to use it."""
from .training.trainer import main

if __name__ == "__main__":
    import signal
    import sys
    # SIGTERM unwinds like Ctrl-C, so that a temporary output being written is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
