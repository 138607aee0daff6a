"""The crash test's job, its callbacks and harness (tests/test_crash.py, tests/soak)."""
