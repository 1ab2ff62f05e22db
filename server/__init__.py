"""What runs at the coordinator: the Flower ServerApp and the simulation launcher."""
