"""`python -m metacompress.dialogues`: multi-turn dialogues from single-question datasets. It lives in
`metacompress.training.dialogues`, whose docstring says how to use it; a missing extra is one
`error:` line."""

if __name__ == "__main__":
    from .extras import run

    run("metacompress.training.dialogues")
