"""Use cases: what the service does (detect, embed, compare, enroll, identify), knowing no HTTP."""
