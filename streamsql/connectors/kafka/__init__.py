"""The Kafka connector: the source (`source`) reads through a client (`client`, implemented on
kafka-python in `kafka_python` and on librdkafka in `confluent`) that decodes record batches
(`records`); the sink (`sink`) writes with kafka-python's producer. `settings` checks the
`kafka.` options both pass on; `net` bounds kafka-python's network waits."""
