"""Built-in worlds: simulated data sets to run the whole loop on without any set-up."""

from loopml.datasets.fraud import TRANSACTION_SCHEMA, FraudWorldConfig, simulate, write_world

__all__ = ["TRANSACTION_SCHEMA", "FraudWorldConfig", "simulate", "write_world"]
