"""`python -m metacompress.export_features`: a model's visual tokens as the runtime's input file. It lives in
`metacompress.training.features`, whose docstring says how to use it; a missing extra is one
`error:` line."""

if __name__ == "__main__":
    from .extras import run

    run("metacompress.training.features")
