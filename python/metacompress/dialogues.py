"""`python -m metacompress.dialogues`: multi-turn dialogues from single-question datasets; it lives in
`metacompress.training.dialogues`, whose docstring says how to use it."""
from .training.dialogues import main

if __name__ == "__main__":
    main()
