"""Tests of the protocol codecs: the contract every codec keeps (test_contract.py, with its
inputs in samples.py), then what each protocol does on its own (test_<protocol>_*.py)."""
