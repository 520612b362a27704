"""qnode.gateware"""
