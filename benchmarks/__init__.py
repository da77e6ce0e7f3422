"""``make bench``: fleetscore against the compute floor and the alternatives, on one generated fleet."""
