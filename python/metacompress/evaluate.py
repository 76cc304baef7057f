"""`python -m metacompress.evaluate`: the evaluation (SPEC section 10). It lives in
`metacompress.evaluation.harness`, whose docstring says how to use it; a missing extra is one
`error:` line."""

if __name__ == "__main__":
    from .extras import run

    run("metacompress.evaluation.harness")
