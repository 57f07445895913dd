"""Code shared by the receiver and the workers: configuration, envelope, broker
topology and publishing, the Lime client, the mapping engine, logging."""

__version__ = "0.1.0"
