"""qnode.sim"""
