"""Real components for tests and demos: a Kafka-protocol broker on the loopback interface."""
