"""What runs at a hospital: the Flower ClientApp (and, later, the diagnosis client)."""
