"""qfleet learner: networks, losses, the training loop and weight publishing (not built yet)."""
