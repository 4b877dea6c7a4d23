"""Generation of "like this but different" variants."""
