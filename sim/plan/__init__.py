"""`rtmsim plan`: capacity and cost from the calibrated model, in virtual time.

The capacity sweep (how many instances for a load, with the scenario's storms) and the
billing-period projection (quota, overage and cost over one period) both run the real
server core inside the virtual engine (`sim.virtual`), so their rules are the server's.
"""
