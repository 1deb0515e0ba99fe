"""`python -m mae_hf.visualize MODEL_DIR IMAGE...`: see `cli`."""

from .cli import main

if __name__ == "__main__":
    main()
