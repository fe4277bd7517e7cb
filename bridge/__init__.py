"""pulsar-serving-bridge: Pulsar -> Databricks Model Serving -> Pulsar, at least once."""

__version__ = "0.1.0"
