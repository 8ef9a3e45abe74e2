"""The pod runner's scenarios (deploy/check/check_pods.py runs them): the caller at the edge, and
one module per scenario."""
