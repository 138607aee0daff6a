"""Kafka source acceptance: the workload, the expectation and the SIGKILL harness."""
