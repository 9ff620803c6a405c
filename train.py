"""The original's entry point, kept: `python train.py app:apps/X.yml [key=value ...]`."""
import sys

from adabits.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
