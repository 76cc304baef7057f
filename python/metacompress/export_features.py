"""`python -m metacompress.export_features`: a model's visual tokens as the runtime's input file; it lives in
`metacompress.training.features`, whose docstring says how to use it."""
from .training.features import main

if __name__ == "__main__":
    main()
