"""The scripts here run under torchrun, launched by tests/test_distributed.py; pytest must not import them."""

collect_ignore_glob = ["*.py"]
