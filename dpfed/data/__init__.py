"""Federated sequence datasets: generators and loaders that yield TFF ClientData."""
