"""Fault injection for tests: a faulty HTTP proxy (:mod:`.proxy`) and botocore hooks (:mod:`.hooks`)."""
