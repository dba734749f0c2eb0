"""`python -m toolkit migrate ...` and `python -m toolkit integrity ...`."""
from toolkit.cli import main

if __name__ == "__main__":
    main()
