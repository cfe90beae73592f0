"""Federation: strategies, client samplers, the TFF runtime and the round loop."""
