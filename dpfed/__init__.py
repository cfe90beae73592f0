"""dpfed: differentially private federated training of GRU sequence models."""
