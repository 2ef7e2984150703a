"""`python -m rlhf_ops +experiment=NAME [overrides]`: see rlhf_ops.cli and README.md."""

from .cli import main

if __name__ == "__main__":
    main(fast_exit=True)
