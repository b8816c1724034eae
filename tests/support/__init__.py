"""Helpers the tests share, imported as `support.<module>`: tests/ is on sys.path because pytest's
default (prepend) import mode puts the folder of the root conftest.py there. tests/conftest.py registers
this package for assertion rewriting, so a failed assert in a helper shows its values."""
