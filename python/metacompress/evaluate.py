"""`python -m metacompress.evaluate`: the evaluation (SPEC section 10); it lives in
`metacompress.evaluation.harness`, whose docstring says how to use it."""
from .evaluation.harness import main

if __name__ == "__main__":
    raise SystemExit(main())
